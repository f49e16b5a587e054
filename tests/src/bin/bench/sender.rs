//! The sending side of a real-traffic measurement: UDP datagrams with sendmmsg
//! from namespace a, the filter switched on and off in between (ABBA), CPU time
//! of the sending thread per datagram.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::TcAttachOptions};
use egress::dataplane::Loaded;
use egress_tests::{Pair, in_ns};

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), ns. Unlike wall time it
/// leaves out time the thread spends preempted or, on a VM with paravirtual steal
/// accounting, while the vCPU is not running: the largest sources of noise here.
/// It keeps the softirq work done in the thread's context (the receive side).
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to one CPU so that its packets, their softirq work and
/// the per-CPU maps stay on one CPU for the whole measurement.
pub(crate) fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Datagrams per sendmmsg call.
pub(crate) const BATCH: usize = 32;

/// How a measurement switches its filter on and off.
pub(crate) enum Toggle {
    /// No filter: both halves unfiltered (shows the noise floor).
    Nothing,
    /// A loaded classifier, attached while on to `iface` in namespace `ns` (None:
    /// a): on tcx egress, or on tcx ingress ahead of the sink.
    Tc { loaded: Loaded, program: &'static str, iface: String, ns: Option<String>, ingress: bool },
    /// A loaded XDP program, attached while on to `iface` in namespace `ns` (native mode).
    Xdp { loaded: Loaded, program: &'static str, iface: String, ns: String },
    /// Commands (argv) that add (on) and remove (off) the jump to already loaded rules.
    Cmds { on: Vec<String>, off: Vec<String> },
}

/// Runs `f` with the calling thread in namespace `ns` (None: where it is), then
/// moves it back: for attaching to b's interface from the sending thread in a.
fn in_ns_here<T>(ns: Option<&str>, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let Some(ns) = ns else { return f() };
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    let there = std::fs::File::open(format!("/run/netns/{ns}"))?;
    let enter = |fd: &std::fs::File| -> anyhow::Result<()> {
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    enter(&there)?;
    let r = f();
    enter(&home)?;
    r
}

/// Runs a command (argv) in the caller's namespaces; its stderr in the error.
pub(crate) fn run_cmd<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> anyhow::Result<()> {
    let (cmd, rest) = args.split_first().ok_or_else(|| anyhow::anyhow!("empty command"))?;
    let o = std::process::Command::new(cmd).args(rest).output()?;
    if !o.status.success() {
        anyhow::bail!("{args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// argv from a command line without quoting.
pub(crate) fn argv(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// Segments per measurement, alternating unfiltered/filtered (ABBA order).
pub(crate) const SEGMENTS: usize = 8;

/// One measurement in a fresh pair: UDP datagrams from a to `targets` (address,
/// port; all routed to b) with sendmmsg, in SEGMENTS segments of `seg` each that
/// alternate between the filter off and on (A B B A A B B A: drift cancels).
/// Returns (mean CPU ns/packet unfiltered, mean filtered). The toggles run in the
/// sending thread, which is in namespace a; commands it starts inherit that.
pub(crate) fn measure_traffic(
    pair: &Pair,
    targets: Vec<(std::net::IpAddr, u16)>,
    toggle: Toggle,
    seg: Duration,
) -> anyhow::Result<(f64, f64)> {
    // b's ingress drops everything (the sink), so no socket lookups, ICMP errors or
    // queueing on the receiving side blur the comparison.
    let v6 = targets.first().is_some_and(|t| t.0.is_ipv6());
    let flows = targets.len();
    in_ns(&pair.a, move || -> anyhow::Result<(f64, f64)> {
        let mut toggle = toggle;
        let mut link = None;
        let mut xdp_link = None;
        let mut state = false;
        let mut set = |on: bool, toggle: &mut Toggle| -> anyhow::Result<()> {
            if on == state {
                return Ok(());
            }
            state = on;
            match toggle {
                Toggle::Nothing => {}
                Toggle::Tc { loaded, program, iface, ns, ingress } => {
                    let p: &mut SchedClassifier =
                        loaded.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program}"))?.try_into()?;
                    match (on, link.take()) {
                        (true, None) => {
                            // Ingress: first in the tcx chain, so it runs before the sink.
                            let (at, order) = if *ingress {
                                (TcAttachType::Ingress, LinkOrder::first())
                            } else {
                                (TcAttachType::Egress, LinkOrder::default())
                            };
                            let id =
                                in_ns_here(ns.as_deref(), || Ok(p.attach_with_options(iface, at, TcAttachOptions::TcxOrder(order))?))?;
                            link = Some(id);
                        }
                        (false, Some(id)) => p.detach(id)?,
                        (_, l) => link = l,
                    }
                }
                Toggle::Xdp { loaded, program, iface, ns } => {
                    let p: &mut Xdp = loaded.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program}"))?.try_into()?;
                    match (on, xdp_link.take()) {
                        (true, None) => xdp_link = Some(in_ns_here(Some(ns), || Ok(p.attach(iface, XdpMode::Driver)?))?),
                        (false, Some(id)) => p.detach(id)?,
                        (_, l) => xdp_link = l,
                    }
                }
                Toggle::Cmds { on: a, off: b } => run_cmd(if on { a } else { b })?,
            }
            Ok(())
        };
        pin_to_cpu(1);
        let sock =
            UdpSocket::bind(if v6 { SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)) } else { SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)) })?;
        // Never block: a full send buffer must not stall the benchmark.
        sock.set_nonblocking(true)?;
        let fd = sock.as_raw_fd();
        let mut payload = [0u8; 18];
        let addrs: Vec<socket2::SockAddr> = targets.iter().map(|&(ip, port)| SocketAddr::new(ip, port).into()).collect();
        let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
        // SAFETY: mmsghdr is plain data; zero is a valid (empty) header.
        let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut next = 0usize;
        let mut batch = |hdrs: &mut Vec<libc::mmsghdr>, next: &mut usize| -> usize {
            for h in hdrs.iter_mut() {
                let a = &addrs[*next % addrs.len()];
                *next += 1;
                h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = a.len();
                h.msg_hdr.msg_iov = &mut iov;
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: BATCH headers, each pointing at a live address and the payload.
            let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), BATCH as libc::c_uint, 0) };
            if n < 0 { 0 } else { n as usize }
        };
        let mut segment = |hdrs: &mut Vec<libc::mmsghdr>, next: &mut usize| -> f64 {
            // Warm-up after a switch: the flow cache, the CPU caches.
            for _ in 0..(2 * flows / BATCH).max(32) {
                batch(hdrs, next);
            }
            let t = Instant::now();
            let c0 = thread_cpu_ns();
            let mut sent = 0;
            while t.elapsed() < seg {
                sent += batch(hdrs, next);
            }
            (thread_cpu_ns() - c0) as f64 / sent.max(1) as f64
        };
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for i in 0..SEGMENTS {
            // A B B A A B B A
            let filtered = matches!(i % 4, 1 | 2);
            set(filtered, &mut toggle)?;
            let ns = segment(&mut hdrs, &mut next);
            if filtered { on.push(ns) } else { off.push(ns) }
        }
        set(false, &mut toggle)?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        Ok((mean(&off), mean(&on)))
    })?
}
