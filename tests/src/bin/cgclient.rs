//! `egress-cgroup-client CGROUP NETNS`: a real process for the cgroup tests.
//! Joins the cgroup (v2 directory) and the network namespace, prints
//! "ready PID", then runs one command per stdin line and answers one line:
//! - `tcp ADDR PORT`: connect (1.5 s timeout), send a byte, read its echo:
//!   "ok MS" or "err ERRNO MS" (ERRNO as a name: EPERM, ETIMEDOUT, ...).
//! - `udp ADDR PORT N`: N datagrams from an unconnected socket (sendto):
//!   "sent K err ERRNO" (ERRNO of the last failure, "-" if none).
//! - `udpc ADDR PORT`: connect a UDP socket, send one datagram: "ok MS" or "err ERRNO MS".
//! - `move CGROUP`: join another cgroup: "ok".
//! - `listen PORT`: a TCP echo server of this process (one byte per
//!   connection), on every address: "ok".
//! - `connects ADDR PORT N`: N TCP connect() calls (a port nobody listens on:
//!   refused at once either way): "ns MEAN" per call.
//! - `lookup SERVER NAME`: an A query over UDP to SERVER:53 (1 s timeout):
//!   "ok ADDR..." (the answer's IPv4 addresses) or "err ERRNO".
//! - `raw HEX`: sends the IPv4 packet HEX (header included) from a raw socket:
//!   "ok" or "err ERRNO".

use std::{
    io::{BufRead, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

fn join(cgroup: &str) -> std::io::Result<()> {
    std::fs::write(format!("{cgroup}/cgroup.procs"), std::process::id().to_string())
}

fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(n) => format!("E{n}"),
        None if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => "ETIMEDOUT".into(),
        None => format!("{:?}", e.kind()),
    }
}

fn any(v6: bool) -> SocketAddr {
    if v6 { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() }
}

fn run(line: &str) -> String {
    let w: Vec<&str> = line.split_whitespace().collect();
    let addr = |i: usize| -> Option<SocketAddr> { Some(SocketAddr::new(w.get(i)?.parse::<IpAddr>().ok()?, w.get(i + 1)?.parse().ok()?)) };
    match w.first().copied() {
        Some("tcp") => {
            let Some(a) = addr(1) else { return "bad command".into() };
            let t = Instant::now();
            let r = TcpStream::connect_timeout(&a, Duration::from_millis(1500)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(1500)))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            });
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match r {
                Ok(()) => format!("ok {ms:.3}"),
                Err(e) => format!("err {} {ms:.3}", errno(&e)),
            }
        }
        Some("udp") => {
            let (Some(a), Some(n)) = (addr(1), w.get(3).and_then(|n| n.parse::<u32>().ok())) else { return "bad command".into() };
            let s = match UdpSocket::bind(any(a.is_ipv6())) {
                Ok(s) => s,
                Err(e) => return format!("sent 0 err {}", errno(&e)),
            };
            let (mut sent, mut last) = (0, "-".to_string());
            for i in 0..n {
                match s.send_to(&i.to_be_bytes(), a) {
                    Ok(_) => sent += 1,
                    Err(e) => last = errno(&e),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            format!("sent {sent} err {last}")
        }
        Some("udpc") => {
            let Some(a) = addr(1) else { return "bad command".into() };
            let t = Instant::now();
            let r = UdpSocket::bind(any(a.is_ipv6())).and_then(|s| {
                s.connect(a)?;
                s.send(b"x").map(|_| ())
            });
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match r {
                Ok(()) => format!("ok {ms:.3}"),
                Err(e) => format!("err {} {ms:.3}", errno(&e)),
            }
        }
        Some("connects") => {
            let (Some(a), Some(n)) = (addr(1), w.get(3).and_then(|n| n.parse::<u32>().ok())) else { return "bad command".into() };
            let t = Instant::now();
            for _ in 0..n {
                let _ = TcpStream::connect(a);
            }
            format!("ns {:.0}", t.elapsed().as_nanos() as f64 / f64::from(n.max(1)))
        }
        Some("listen") => {
            let Some(port) = w.get(1).and_then(|p| p.parse::<u16>().ok()) else { return "bad command".into() };
            match std::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port))) {
                Ok(l) => {
                    std::thread::spawn(move || {
                        for mut s in l.incoming().flatten() {
                            let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
                            let mut b = [0u8; 1];
                            if s.read_exact(&mut b).is_ok() {
                                let _ = s.write_all(&b);
                            }
                        }
                    });
                    "ok".into()
                }
                Err(e) => format!("err {}", errno(&e)),
            }
        }
        Some("lookup") => {
            let (Some(server), Some(name)) = (w.get(1).and_then(|a| a.parse::<IpAddr>().ok()), w.get(2)) else {
                return "bad command".into();
            };
            match lookup(server, name) {
                Ok(addrs) => format!("ok{}", addrs.iter().map(|a| format!(" {a}")).collect::<String>()),
                Err(e) => format!("err {}", errno(&e)),
            }
        }
        Some("raw") => {
            let Some(bytes) = w.get(1).and_then(|h| unhex(h)) else { return "bad command".into() };
            match raw(&bytes) {
                Ok(()) => "ok".into(),
                Err(e) => format!("err {}", errno(&e)),
            }
        }
        Some("move") => match w.get(1).map(|c| join(c)) {
            Some(Ok(())) => "ok".into(),
            Some(Err(e)) => format!("err {e}"),
            None => "bad command".into(),
        },
        _ => "bad command".into(),
    }
}

/// An A query for `name` to `server`:53 from a connected UDP socket; the
/// answer's IPv4 addresses.
fn lookup(server: IpAddr, name: &str) -> std::io::Result<Vec<std::net::Ipv4Addr>> {
    let mut q = vec![0x51, 0x5e, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = UdpSocket::bind(any(server.is_ipv6()))?;
    s.set_read_timeout(Some(Duration::from_millis(1000)))?;
    s.connect(SocketAddr::new(server, 53))?;
    s.send(&q)?;
    let mut b = [0u8; 1500];
    let n = s.recv(&mut b)?;
    let b = &b[..n];
    // Header, the question (echoed), then the answer records.
    let mut i = q.len();
    let count = u16::from_be_bytes([b[6], b[7]]);
    let mut out = Vec::new();
    for _ in 0..count {
        // The owner name: labels, or a compression pointer.
        while i < b.len() && b[i] != 0 && b[i] & 0xc0 != 0xc0 {
            i += 1 + b[i] as usize;
        }
        i += if i < b.len() && b[i] & 0xc0 == 0xc0 { 2 } else { 1 };
        if i + 10 > b.len() {
            break;
        }
        let (ty, len) = (u16::from_be_bytes([b[i], b[i + 1]]), u16::from_be_bytes([b[i + 8], b[i + 9]]) as usize);
        i += 10;
        if ty == 1 && len == 4 && i + 4 <= b.len() {
            out.push(std::net::Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]));
        }
        i += len;
    }
    Ok(out)
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok()).collect()
}

/// Sends an IPv4 packet, header included (IPPROTO_RAW), to its destination.
fn raw(p: &[u8]) -> std::io::Result<()> {
    if p.len() < 20 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket calls on a fd this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
        let rc = libc::sendto(
            fd,
            p.as_ptr().cast(),
            p.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 { Err(e) } else { Ok(()) }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: egress-cgroup-client CGROUP NETNS");
        std::process::exit(2);
    }
    if let Err(e) = join(&args[1]) {
        eprintln!("join cgroup {}: {e}", args[1]);
        std::process::exit(1);
    }
    let ns = match std::fs::File::open(format!("/run/netns/{}", args[2])) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("open netns {}: {e}", args[2]);
            std::process::exit(1);
        }
    };
    // SAFETY: setns on a namespace fd, in this single-threaded process.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        eprintln!("setns {}: {}", args[2], std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "ready {}", std::process::id());
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(out, "{}", run(&line));
        let _ = out.flush();
    }
}
