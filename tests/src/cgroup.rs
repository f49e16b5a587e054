//! Cgroups for the workload-scope tests: a cgroup tree of the test's own under
//! the cgroup v2 mount (found from /proc/mounts: /sys/fs/cgroup/unified on
//! these hybrid hosts), real client processes in it (`egress-cgroup-client`),
//! and servers in the server namespace that count what reaches them.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};

use crate::in_ns_io;

/// A cgroup made by a test, removed (with its children) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// A fresh cgroup directly under the cgroup v2 mount.
    pub fn new(tag: &str) -> Result<TestCgroup> {
        let mount = egress::dataplane::cgroup2_mount().map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = crate::next_seq();
        let path = mount.join(format!("egress-test-{tag}-{:x}{n}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// A child cgroup (removed with this one).
    pub fn child(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(p)
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

fn remove_tree(p: &Path) {
    // Every rule set in the tree goes first (a child may carry its own).
    let _ = Command::new(crate::egress_bin()).args(["detach", "--cgroup", p.to_str().unwrap_or_default()]).output();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    // Processes still inside (a test that failed early) go to the root first.
    if let (Ok(procs), Ok(mount)) = (std::fs::read_to_string(p.join("cgroup.procs")), egress::dataplane::cgroup2_mount()) {
        for pid in procs.lines() {
            let _ = std::fs::write(mount.join("cgroup.procs"), pid);
        }
    }
    let _ = std::fs::remove_dir(p);
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// A client process in a cgroup and a network namespace.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Client {
    /// Starts `bin` (the test's `env!("CARGO_BIN_EXE_egress-cgroup-client")`)
    /// in `cgroup`, in namespace `ns`.
    pub fn start(bin: &str, cgroup: &Path, ns: &str) -> Result<Client> {
        let mut child = Command::new(bin)
            .args([cgroup.to_str().unwrap_or_default(), ns])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {bin}"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = line.trim().strip_prefix("ready ").and_then(|p| p.parse().ok()).with_context(|| format!("client said {line:?}"))?;
        Ok(Client { child, stdin, stdout, pid })
    }

    /// One command, its one-line answer.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to the client");
        self.stdin.flush().expect("flush");
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("read the client's answer");
        out.trim().to_string()
    }

    /// TCP connect + echo: Ok(ms) or Err((errno, ms)).
    pub fn tcp(&mut self, dst: IpAddr, port: u16) -> std::result::Result<f64, (String, f64)> {
        let a = self.cmd(&format!("tcp {dst} {port}"));
        let w: Vec<&str> = a.split_whitespace().collect();
        match w.as_slice() {
            ["ok", ms] => Ok(ms.parse().unwrap_or(f64::NAN)),
            ["err", e, ms] => Err((e.to_string(), ms.parse().unwrap_or(f64::NAN))),
            _ => panic!("client answered {a:?}"),
        }
    }

    /// `n` datagrams by sendto: (sent, errno of the last failure or "-").
    pub fn udp(&mut self, dst: IpAddr, port: u16, n: u32) -> (u32, String) {
        let a = self.cmd(&format!("udp {dst} {port} {n}"));
        let w: Vec<&str> = a.split_whitespace().collect();
        match w.as_slice() {
            ["sent", k, "err", e] => (k.parse().unwrap_or(0), e.to_string()),
            _ => panic!("client answered {a:?}"),
        }
    }

    /// Serves a TCP echo on `port` from this process (so from its cgroup).
    pub fn listen(&mut self, port: u16) {
        let a = self.cmd(&format!("listen {port}"));
        assert_eq!(a, "ok", "listen on {port}");
    }

    /// Moves the process to another cgroup.
    pub fn move_to(&mut self, cgroup: &Path) {
        let a = self.cmd(&format!("move {}", cgroup.display()));
        assert_eq!(a, "ok", "move to {}", cgroup.display());
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Servers in a namespace: a TCP echo on each of `tcp` ports and a UDP counter
/// on each of `udp` ports, on every address; they run until dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    udp: Vec<(u16, Arc<AtomicU32>)>,
}

impl Servers {
    pub fn start(ns: &str, tcp: &[u16], udp: &[u16]) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        for &port in tcp {
            let l = in_ns_io(ns, move || TcpListener::bind(SocketAddr::from(([0u16; 8], port))))?;
            l.set_nonblocking(true)?;
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                            let mut b = [0u8; 1];
                            if s.read_exact(&mut b).is_ok() {
                                let _ = s.write_all(&b);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
        }
        let mut counts = Vec::new();
        for &port in udp {
            let s = in_ns_io(ns, move || UdpSocket::bind(SocketAddr::from(([0u16; 8], port))))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            let n = Arc::new(AtomicU32::new(0));
            counts.push((port, n.clone()));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if s.recv_from(&mut b).is_ok() {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        Ok(Servers { stop, udp: counts })
    }

    /// Datagrams received on `port` so far (after a short wait for stragglers).
    pub fn received(&self, port: u16) -> u32 {
        std::thread::sleep(Duration::from_millis(100));
        self.udp.iter().find(|(p, _)| *p == port).map(|(_, n)| n.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
