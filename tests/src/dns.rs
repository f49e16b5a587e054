//! A real DNS server for the rules by name: dnsmasq in namespace b of a
//! [`Pair`], answering from records the test chooses, and the client side in
//! namespace a: the libc resolver (through `/etc/netns/A/resolv.conf`, which
//! `ip netns exec` mounts over /etc/resolv.conf), timed TCP connects, and raw
//! DNS messages for the spoofing tests.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Pair, in_ns_io, sh};

/// The resolver's address (b's) and a listed resolver where nothing listens.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const SILENT_RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// An address of b that is not a resolver.
pub const NOT_RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);

/// dnsmasq serving `records` in namespace b; stopped and cleaned up on drop.
pub struct DnsServer {
    child: Child,
    netns_dir: PathBuf,
    /// Ports b listens on with TCP acceptors (for [`connect_ms`]).
    _listeners: Vec<std::thread::JoinHandle<()>>,
}

/// A record of the test zone.
pub enum Record<'a> {
    /// name, address, TTL.
    A(&'a str, IpAddr, u32),
    /// alias -> target (the target must have an address record).
    Cname(&'a str, &'a str),
    /// Every name below a domain (and the domain) -> one address (dnsmasq's
    /// `--address`; TTL 0).
    Domain(&'a str, IpAddr),
}

impl DnsServer {
    /// Starts dnsmasq on b (192.0.2.2) with `records`, gives b the records'
    /// addresses (and 192.0.2.3, 192.0.2.4), routes them from a over the veth,
    /// points a's resolver at b, and accepts TCP on `ports` of every address of b.
    pub fn start(p: &Pair, records: &[Record<'_>], ports: &[u16]) -> Result<DnsServer> {
        sh(&["ip", "-n", &p.a, "route", "add", "198.51.100.0/24", "dev", &p.a_if])?;
        sh(&["ip", "-n", &p.a, "route", "add", "203.0.113.0/24", "dev", &p.a_if])?;
        sh(&["ip", "-n", &p.a, "-6", "route", "add", "2001:db8:2::/64", "dev", &p.a_if])?;
        let extra = [SILENT_RESOLVER, NOT_RESOLVER];
        DnsServer::serve(&p.b, &p.b_if, RESOLVER, &extra, &p.a, records, ports)
    }

    /// Makes the libc resolver of namespace `client_ns` ask over TCP
    /// (`options use-vc`).
    pub fn use_tcp(&self) -> Result<()> {
        let f = self.netns_dir.join("resolv.conf");
        let text = std::fs::read_to_string(&f)?;
        std::fs::write(&f, text.replace("options ", "options use-vc "))?;
        Ok(())
    }

    /// dnsmasq in namespace `ns` on `listen` (an address of `iface` there),
    /// with the records' addresses and `extra` added to `iface`; `client_ns`'s
    /// resolver points at it; TCP accepted on `ports`.
    pub fn serve(
        ns: &str,
        iface: &str,
        listen: Ipv4Addr,
        extra: &[Ipv4Addr],
        client_ns: &str,
        records: &[Record<'_>],
        ports: &[u16],
    ) -> Result<DnsServer> {
        let mut batch = String::new();
        let mut seen = std::collections::HashSet::new();
        for r in records {
            if let Record::A(_, addr, _) | Record::Domain(_, addr) = r
                && seen.insert(*addr)
            {
                let len = if addr.is_ipv6() { 128 } else { 32 };
                batch.push_str(&format!("addr add {addr}/{len} dev {iface}{}\n", if addr.is_ipv6() { " nodad" } else { "" }));
            }
        }
        for a in extra {
            batch.push_str(&format!("addr add {a}/32 dev {iface}\n"));
        }
        if !batch.is_empty() {
            let f = crate::temp_file("addrs.batch", &batch);
            sh(&["ip", "-n", ns, "-batch", &f.to_string_lossy()])?;
        }
        let netns_dir = PathBuf::from("/etc/netns").join(client_ns);
        std::fs::create_dir_all(&netns_dir)?;
        std::fs::write(netns_dir.join("resolv.conf"), format!("nameserver {listen}\noptions timeout:1 attempts:1\n"))?;
        let mut args: Vec<String> = [
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-daemon",
            "--bind-interfaces",
            "--except-interface=lo",
            "--port=53",
            "--user=root",
            "--pid-file=",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-address={listen}"));
        for r in records {
            match r {
                Record::A(name, addr, ttl) => args.push(format!("--host-record={name},{addr},{ttl}")),
                Record::Cname(alias, target) => args.push(format!("--cname={alias},{target}")),
                Record::Domain(d, addr) => args.push(format!("--address=/{d}/{addr}")),
            }
        }
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "dnsmasq"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start dnsmasq (Debian's dnsmasq-base; `cargo xtask setup` installs it)")?;
        let mut listeners = Vec::new();
        for &port in ports {
            let l = in_ns_io(ns, move || TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))?;
            listeners.push(std::thread::spawn(move || {
                for s in l.incoming() {
                    drop(s);
                }
            }));
        }
        let s = DnsServer { child, netns_dir, _listeners: listeners };
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        let probe = records.iter().find_map(|r| if let Record::A(n, _, _) = r { Some(*n) } else { None }).unwrap_or("localhost");
        while Instant::now() < deadline {
            if udp_query(ns, listen, probe).is_some() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("dnsmasq did not answer within 5 s")
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.netns_dir);
    }
}

/// One query from namespace `ns` to `server`:53 (a socket of the test, not the
/// libc resolver); the answer's bytes.
fn udp_query(ns: &str, server: Ipv4Addr, name: &str) -> Option<Vec<u8>> {
    let q = query(0x4242, name, 1);
    in_ns_io(ns, move || -> std::io::Result<Option<Vec<u8>>> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.send_to(&q, (server, 53))?;
        let mut b = [0u8; 1500];
        Ok(s.recv(&mut b).ok().map(|n| b[..n].to_vec()))
    })
    .ok()
    .flatten()
}

/// The libc resolver in namespace `ns`: the IPv4 addresses of `name` (none
/// when it cannot be resolved).
pub fn resolve(ns: &str, name: &str) -> Vec<IpAddr> {
    let out = Command::new("ip").args(["netns", "exec", ns, "getent", "ahostsv4", name]).output();
    let Ok(out) = out else { return Vec::new() };
    let mut v: Vec<IpAddr> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    v.dedup();
    v
}

/// A TCP connect from namespace `ns` to `dst`:`port`: Some(milliseconds) when
/// the handshake completed within `timeout`.
pub fn connect_ms(ns: &str, dst: IpAddr, port: u16, timeout: Duration) -> Option<u128> {
    in_ns_io(ns, move || -> std::io::Result<Option<u128>> {
        let t = Instant::now();
        Ok(TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout).ok().map(|_| t.elapsed().as_millis()))
    })
    .ok()
    .flatten()
}

/// An open TCP connection from namespace `ns` (kept open by the caller).
pub fn open(ns: &str, dst: IpAddr, port: u16) -> Option<TcpStream> {
    in_ns_io(ns, move || TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(2))).ok()
}

/// Whether `s` still carries data (a write and no reset within a second).
pub fn still_open(s: &mut TcpStream) -> bool {
    // A dropped segment is retransmitted and the write itself still succeeds:
    // ask the kernel whether everything written was acknowledged.
    if s.write_all(b"x").is_err() {
        return false;
    }
    std::thread::sleep(Duration::from_millis(600));
    unacked(s) == 0
}

/// Bytes written on `s` and not yet acknowledged (TCP_INFO).
fn unacked(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: a live socket and a buffer of `len` bytes.
    let rc = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return u32::MAX;
    }
    // struct tcp_info: tcpi_unacked at byte offset 24.
    u32::from_ne_bytes([info[24], info[25], info[26], info[27]])
}

/// A DNS query message: one question (`qtype` 1 = A, 28 = AAAA, class IN).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    push_name(&mut m, name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m
}

/// A DNS answer to `name` (type A) with A records of `addrs` (owner names
/// compressed to the question), TTL `ttl`.
pub fn answer(id: u16, name: &str, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x81, 0x80, 0, 1]);
    m.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    push_name(&mut m, name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    for a in addrs {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&[0, 4]);
        m.extend_from_slice(&a.octets());
    }
    m
}

fn push_name(m: &mut Vec<u8>, name: &str) {
    for l in name.trim_end_matches('.').split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.push(0);
}

/// Sends `msg` from `from`:53 in namespace `ns` to `to`:`port`.
pub fn send_from_53(ns: &str, from: Ipv4Addr, to: SocketAddr, msg: Vec<u8>) -> Result<()> {
    in_ns_io(ns, move || -> std::io::Result<()> {
        let s = UdpSocket::bind((from, 53))?;
        s.send_to(&msg, to)?;
        Ok(())
    })
}

/// A client socket in namespace `ns` that sent `query` to `server`:53; its port.
pub fn send_query(ns: &str, server: Ipv4Addr, msg: Vec<u8>) -> Result<UdpSocket> {
    in_ns_io(ns, move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.send_to(&msg, (server, 53))?;
        Ok(s)
    })
}
