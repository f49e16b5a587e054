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
        Some("move") => match w.get(1).map(|c| join(c)) {
            Some(Ok(())) => "ok".into(),
            Some(Err(e)) => format!("err {e}"),
            None => "bad command".into(),
        },
        _ => "bad command".into(),
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
