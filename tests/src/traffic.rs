//! Continuous UDP traffic from a pair's namespace a to b on a few ports, for
//! tests that replace rule sets under load: what was sent and what arrived,
//! per port.

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{B4, Pair, in_ns, in_ns_io};

/// Round-robin UDP datagrams to each port, paced so the receiver keeps up.
pub struct UdpLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<Vec<AtomicU64>>,
    received: Arc<Vec<AtomicU64>>,
    tx: JoinHandle<()>,
    rx: JoinHandle<()>,
}

impl UdpLoad {
    /// Binds a receiver per port in b and starts sending from a.
    pub fn start(p: &Pair, ports: &[u16]) -> UdpLoad {
        let socks: Vec<UdpSocket> = ports
            .iter()
            .map(|&port| {
                in_ns_io(&p.b, move || {
                    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
                    s.set_recv_buffer_size(8 << 20)?;
                    s.bind(&std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
                    s.set_nonblocking(true)?;
                    Ok(UdpSocket::from(s))
                })
                .expect("bind in b")
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = || Arc::new(ports.iter().map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let (sent, received) = (counts(), counts());
        let rx = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut idle_after_stop = 0;
                loop {
                    let mut got = false;
                    for (i, s) in socks.iter().enumerate() {
                        while s.recv_from(&mut buf).is_ok() {
                            received[i].fetch_add(1, Ordering::Relaxed);
                            got = true;
                        }
                    }
                    if !got {
                        if stop.load(Ordering::Relaxed) {
                            idle_after_stop += 1;
                            if idle_after_stop > 200 {
                                break;
                            }
                        }
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            })
        };
        let tx = {
            let (stop, sent, ns, ports) = (stop.clone(), sent.clone(), p.a.clone(), ports.to_vec());
            std::thread::spawn(move || {
                in_ns(&ns, move || {
                    let c = UdpSocket::bind("0.0.0.0:0").unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        for (i, port) in ports.iter().enumerate() {
                            // A denied datagram fails with ENOBUFS: it passed the hook all the same.
                            let _ = c.send_to(b"x", (B4, *port));
                            sent[i].fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
                .unwrap()
            })
        };
        UdpLoad { stop, sent, received, tx, rx }
    }

    /// Stops sending, drains the receivers; (sent, received) per port.
    pub fn stop(self) -> (Vec<u64>, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx.join().unwrap();
        self.rx.join().unwrap();
        let load = |v: &Vec<AtomicU64>| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        (load(&self.sent), load(&self.received))
    }
}
