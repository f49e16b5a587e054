//! Test harness: network namespaces joined by a veth pair, sockets opened inside a
//! namespace, and the real `egress` binary. Every namespace is deleted on drop,
//! also when a test fails (panics unwind through the guard).

use std::{
    fs,
    io::{Read as _, Write as _},
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

pub const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

pub mod cgroup;
mod daemon;
pub mod dns;
pub mod mmdb;
pub mod random;
pub mod router;
pub mod traffic;

pub use daemon::{Daemon, cpu_ticks};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (for names of namespaces, cgroups, files).
pub fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::SeqCst) as u64
}

pub fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Two namespaces, `a` (the client, where egress filters) and `b` (the server),
/// joined by veth `a_if` <-> `b_if`, with 192.0.2.1/24 + 2001:db8:1::1/64 on a and
/// .2/::2 on b. Names are unique per process and call.
pub struct Pair {
    pub a: String,
    pub b: String,
    pub a_if: String,
    pub b_if: String,
}

impl Pair {
    pub fn new(tag: &str) -> Result<Pair> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:x}{n}", std::process::id());
        // <= 15 bytes; unique names make failures easy to trace (egress itself tells
        // namespaces apart, see `Pair::named`).
        Pair::named(tag, &format!("eg{id}a"), &format!("eg{id}b"))
    }

    /// A pair whose veth ends have the given names (any number of pairs may use the
    /// same names: each lives in namespaces of its own).
    pub fn named(tag: &str, a_if: &str, b_if: &str) -> Result<Pair> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:x}{n}", std::process::id());
        let p = Pair { a: format!("egt-{tag}-{id}-a"), b: format!("egt-{tag}-{id}-b"), a_if: a_if.to_string(), b_if: b_if.to_string() };
        p.create()?;
        Ok(p)
    }

    /// (Re)creates the namespaces and the veth between them.
    pub fn create(&self) -> Result<()> {
        let p = self;
        sh(&["ip", "netns", "add", &p.a])?;
        sh(&["ip", "netns", "add", &p.b])?;
        sh(&["ip", "link", "add", &p.a_if, "netns", &p.a, "type", "veth", "peer", "name", &p.b_if, "netns", &p.b])?;
        for (ns, dev, v4, v6) in [(&p.a, &p.a_if, "192.0.2.1/24", "2001:db8:1::1/64"), (&p.b, &p.b_if, "192.0.2.2/24", "2001:db8:1::2/64")]
        {
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev])?;
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Deletes both namespaces without detaching anything first (what a CI job
    /// that forgets `egress detach` does).
    pub fn delete_namespaces(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }

    /// Permanent neighbour entries for b on a (IPv4 and IPv6): no ARP or neighbour
    /// discovery needed, e.g. when b's ingress drops everything.
    pub fn static_neighbours(&self) -> Result<()> {
        let out = Command::new("ip").args(["-n", &self.b, "-br", "link", "show", &self.b_if]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mac = text
            .split_whitespace()
            .find(|w| w.len() == 17 && w.matches(':').count() == 5)
            .with_context(|| format!("no MAC address in `{}`", text.trim()))?
            .to_string();
        for addr in ["192.0.2.2", "2001:db8:1::2"] {
            sh(&["ip", "-n", &self.a, "neigh", "replace", addr, "lladdr", &mac, "dev", &self.a_if, "nud", "permanent"])?;
        }
        Ok(())
    }

    /// Resolves neighbours (ARP, or NDP with `v6`) from a to b before anything is
    /// asserted: up to 20 single datagrams until one arrives.
    pub fn settle(&self, v6: bool) {
        for _ in 0..20 {
            if self.udp(v6, 7000, 1) == 1 {
                break;
            }
        }
    }

    /// Runs `egress ARGS` inside namespace a (as `ip netns exec` would).
    pub fn egress(&self, args: &[&str]) -> Output {
        egress_in(&self.a, args)
    }

    /// `egress ARGS` in namespace a; panics with its output unless it exits 0.
    pub fn egress_ok(&self, args: &[&str]) -> String {
        egress_ok_in(&self.a, args)
    }

    /// Applies a rule file given as text.
    pub fn apply(&self, rules: &str) -> Output {
        self.apply_file(&temp_file("rules.toml", rules))
    }

    /// Applies a rule file given as text; panics unless it succeeds.
    pub fn apply_ok(&self, rules: &str) -> String {
        let f = temp_file("rules.toml", rules);
        self.egress_ok(&["apply", "--iface", &self.a_if, "--rules", &f.to_string_lossy()])
    }

    /// `egress explain --json` on a's tc-egress for UDP from a to b:`dport`
    /// (source port `sport` if given).
    pub fn explain_udp(&self, dport: u16, sport: Option<u16>) -> serde_json::Value {
        let (dport, sport) = (dport.to_string(), sport.map(|s| s.to_string()));
        let mut args =
            vec!["explain", "--iface", &self.a_if, "--proto", "udp", "--src", "192.0.2.1", "--dst", "192.0.2.2", "--dport", &dport];
        if let Some(s) = &sport {
            args.extend(["--sport", s.as_str()]);
        }
        args.push("--json");
        let out = self.egress_ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"))
    }

    /// Applies a rule file.
    pub fn apply_file(&self, path: &std::path::Path) -> Output {
        let f = path.to_string_lossy().into_owned();
        self.egress(&["apply", "--iface", &self.a_if, "--rules", &f])
    }

    /// `egress counters --json` parsed: (per-rule packets in file order, default packets).
    pub fn counters(&self) -> (Vec<u64>, u64, serde_json::Value) {
        let out = self.egress_ok(&["counters", "--iface", &self.a_if, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"));
        let rules =
            v["rules"].as_array().map(|a| a.iter().map(|r| r["packets"].as_u64().unwrap_or(u64::MAX)).collect()).unwrap_or_default();
        let def = v["default"]["packets"].as_u64().unwrap_or(u64::MAX);
        (rules, def, v)
    }

    /// Sends `n` UDP datagrams from a to b:`port` and returns how many arrived.
    pub fn udp(&self, v6: bool, port: u16, n: u32) -> u32 {
        udp(&self.a, &self.b, if v6 { B6.into() } else { B4.into() }, port, n)
    }

    /// TCP connect from a to b:`port`; true if the handshake completed and a byte echoed.
    pub fn tcp(&self, v6: bool, port: u16) -> bool {
        tcp(&self.a, &self.b, if v6 { B6.into() } else { B4.into() }, port)
    }

    /// Sends `n` ICMP (or ICMPv6) echo requests from a to b; returns the replies seen.
    pub fn ping(&self, v6: bool, n: u32) -> u32 {
        ping_from(&self.a, if v6 { B6.into() } else { B4.into() }, n)
    }
}

/// Sends `n` UDP datagrams from namespace `client` to `dst`:`port`, received in
/// namespace `server`; returns how many arrived.
pub fn udp(client: &str, server: &str, dst: IpAddr, port: u16, n: u32) -> u32 {
    let v6 = dst.is_ipv6();
    let bind: SocketAddr = if v6 { (Ipv6Addr::UNSPECIFIED, port).into() } else { (Ipv4Addr::UNSPECIFIED, port).into() };
    // Retry briefly: a port just released by the previous call was once seen
    // still in use under parallel load (EADDRINUSE).
    let server = in_ns_io(server, move || {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match UdpSocket::bind(bind) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other,
            }
        }
    })
    .unwrap_or_else(|e| panic!("bind udp {bind} in {server}: {e:#}"));
    server.set_read_timeout(Some(Duration::from_millis(300))).ok();
    in_ns_io(client, move || -> std::io::Result<()> {
        let c =
            UdpSocket::bind(if v6 { SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)) } else { SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)) })?;
        for i in 0..n {
            // A dropped datagram makes send fail with ENOBUFS: that is the drop.
            let _ = c.send_to(&i.to_be_bytes(), (dst, port));
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })
    .expect("send udp in a");
    let mut got = 0;
    let mut buf = [0u8; 64];
    while server.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

/// TCP connect from namespace `client` to `dst`:`port`, listened on in namespace
/// `server`; true if the handshake completed and a byte echoed.
pub fn tcp(client: &str, server: &str, dst: IpAddr, port: u16) -> bool {
    let v6 = dst.is_ipv6();
    let bind: SocketAddr = if v6 { (Ipv6Addr::UNSPECIFIED, port).into() } else { (Ipv4Addr::UNSPECIFIED, port).into() };
    let l = in_ns_io(server, move || TcpListener::bind(bind)).unwrap_or_else(|e| panic!("listen on {bind} in {server}: {e:#}"));
    let acceptor = std::thread::spawn(move || {
        l.set_nonblocking(false).ok();
        if let Ok((mut s, _)) = l.accept() {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    let dst = SocketAddr::new(dst, port);
    let ok = in_ns_io(client, move || -> std::io::Result<bool> {
        let mut s = match TcpStream::connect_timeout(&dst, Duration::from_millis(1500)) {
            Ok(s) => s,
            Err(_) => return Ok(false),
        };
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        Ok(s.read_exact(&mut b).is_ok() && b == *b"x")
    })
    .unwrap_or(false);
    if !ok {
        // Unblock the accept() so the thread ends: connect to ourselves inside the server's namespace.
        let _ = in_ns(server, move || {
            TcpStream::connect_timeout(
                &(if v6 { SocketAddr::from((Ipv6Addr::LOCALHOST, port)) } else { SocketAddr::from((Ipv4Addr::LOCALHOST, port)) }),
                Duration::from_millis(500),
            )
        });
    }
    let _ = acceptor.join();
    ok
}

/// Sends `n` ICMP (or ICMPv6) echo requests from namespace `ns` to `dst`; returns the replies seen.
pub fn ping_from(ns: &str, dst: IpAddr, n: u32) -> u32 {
    in_ns(ns, move || ping(dst, n)).unwrap_or(0)
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Detach first so no pins or state outlive the test.
        for hook in ["tc-egress", "tc-ingress", "xdp"] {
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.a])
                .arg(egress_bin())
                .args(["detach", "--iface", &self.a_if, "--hook", hook])
                .output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// Runs `egress ARGS` inside namespace `ns` (as `ip netns exec` would).
pub fn egress_in(ns: &str, args: &[&str]) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(egress_bin()).args(args);
    c.output().unwrap_or_else(|e| panic!("run egress {args:?}: {e}"))
}

/// `egress ARGS` in namespace `ns`; panics with its output unless it exits 0.
pub fn egress_ok_in(ns: &str, args: &[&str]) -> String {
    let o = egress_in(ns, args);
    assert!(
        o.status.success(),
        "egress {args:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Path of the egress binary under test: $EGRESS_BIN, else target/release/egress.
pub fn egress_bin() -> PathBuf {
    std::env::var_os("EGRESS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/egress"))
}

/// Writes `text` into a fresh temporary file and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("egress-test-{}-{n}", std::process::id()));
    let _ = fs::create_dir_all(&dir);
    let p = dir.join(name);
    fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// Runs `f` on a thread that has joined network namespace `ns`. Sockets made
/// there stay in that namespace wherever they are used later.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let h = std::thread::spawn(move || -> Result<T> {
        let fd = fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    });
    h.join().map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A rule file: default allow and, in order, one rule `no-PORT` per port that
/// denies UDP to it.
pub fn deny_udp(ports: &[u16]) -> String {
    let mut s = String::from("default_policy = \"allow\"\n");
    for p in ports {
        s.push_str(&format!("[[rule]]\nname = \"no-{p}\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"{p}\"\n"));
    }
    s
}

/// [`in_ns`] for closures that return an `io::Result`.
pub fn in_ns_io<T: Send + 'static>(ns: &str, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
    Ok(in_ns(ns, f)??)
}

/// Echo requests over a raw socket (in the calling thread's namespace).
fn ping(dst: IpAddr, n: u32) -> u32 {
    let v6 = dst.is_ipv6();
    let (domain, proto) = if v6 { (Domain::IPV6, Protocol::ICMPV6) } else { (Domain::IPV4, Protocol::ICMPV4) };
    let dst = SocketAddr::new(dst, 0);
    let Ok(s) = Socket::new(domain, Type::RAW, Some(proto)) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
    let mut replies = 0;
    for seq in 0..n as u16 {
        let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
        pkt.extend_from_slice(&id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(b"egress-test-ping");
        if !v6 {
            // The kernel fills in the ICMPv6 checksum itself; ICMPv4's is ours.
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        let _ = s.send_to(&pkt, &dst.into());
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            let Ok(len) = s.recv(&mut buf) else { continue };
            // SAFETY: recv initialised `len` bytes.
            let b: Vec<u8> = buf[..len].iter().map(|x| unsafe { x.assume_init() }).collect();
            // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
            let icmp = if v6 { &b[..] } else { &b[((b[0] & 0x0f) as usize * 4).min(b.len())..] };
            if icmp.len() >= 8 && icmp[0] == if v6 { 129 } else { 0 } && icmp[4..6] == id.to_be_bytes() && icmp[6..8] == seq.to_be_bytes() {
                replies += 1;
                break;
            }
        }
    }
    replies
}

/// Returns from the calling test, saying why, unless running as root.
#[macro_export]
macro_rules! need_root {
    ($why:literal) => {
        if !$crate::is_root() {
            eprintln!(concat!("skipped: needs root (", $why, ")"));
            return;
        }
    };
}

/// True when running as root (the namespace tests need it).
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Keeps the calling thread on the CPU it runs on. For BPF_PROG_TEST_RUN
/// tests that count on the flow cache: its door (the program's door.rs) is
/// per CPU, so a flow is cached at its second packet on the same CPU.
pub fn stay_on_this_cpu() {
    // SAFETY: cpu_set_t is plain data, initialised by CPU_ZERO; the calls read
    // and write only it.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Replaces `path` the way editors do: a new file renamed over the old one.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("swp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename over {}: {e}", path.display()));
}

/// Sends one raw Ethernet frame out of `iface` in namespace `ns` (a packet
/// socket: the frame passes the interface's TC egress hook as it is, however
/// malformed). Ok(false): the hook dropped it (the send says ENOBUFS).
pub fn send_frame(ns: &str, iface: &str, frame: Vec<u8>) -> Result<bool> {
    let iface = std::ffi::CString::new(iface)?;
    in_ns_io(ns, move || {
        // SAFETY: plain socket calls on a socket we own; the address is a valid sockaddr_ll.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(iface.as_ptr()) as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let rc = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            match rc {
                0.. => Ok(true),
                _ if err.raw_os_error() == Some(libc::ENOBUFS) => Ok(false),
                _ => Err(err),
            }
        }
    })
}

/// GET `path` from 127.0.0.1:`port` inside namespace `ns`: (status line, body).
pub fn http_get(ns: &str, port: u16, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let path = path.to_string();
    in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (head.lines().next().unwrap_or_default().to_string(), body.to_string())
    })
    .unwrap()
}
