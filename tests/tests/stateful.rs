//! Stateful mode with real connections between two namespaces (a: egress,
//! b: the peer): a long-lived TCP connection and a UDP flow survive a reload
//! that denies them while a new connection is refused; connections opened from
//! the other side are answered under default deny; ICMP errors about tracked
//! connections pass as RELATED; a full connection table still enforces every
//! rule; IPv6 connections end on FIN both ways and idle flows expire. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use egress_tests::{A4, B4, B6, Pair, in_ns_io, temp_file};
use serde_json::Value;

/// Applies `rules` on a's interface; the command succeeds and says nothing on
/// stderr (no loader warning either, e.g. about the object's BTF).
fn apply(p: &Pair, rules: &str) -> Value {
    let f = temp_file("rules.toml", rules);
    let o = p.egress(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.is_empty(), "egress apply: {}\n{err}", o.status);
    serde_json::from_slice(&o.stdout).unwrap()
}

const OPEN: &str = "stateful = true\ndefault_policy = \"allow\"\n";
const DENY_5401: &str = "stateful = true\ndefault_policy = \"allow\"\n[[rule]]\nname = \"no-5401\"\naction = \"deny\"\nprotocol = \"tcp\"\nports = \"5401\"\n[[rule]]\nname = \"no-5402\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"5402\"\n";

/// A TCP echo server in namespace `ns` on `addr`: every connection is echoed
/// until the peer closes, then closed.
fn tcp_echo_server(ns: &str, addr: SocketAddr) {
    let l = in_ns_io(ns, move || TcpListener::bind(addr)).unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
            });
        }
    });
}

fn echo_byte(s: &mut TcpStream, b: u8) -> bool {
    let mut r = [0u8; 1];
    s.write_all(&[b]).is_ok() && s.read_exact(&mut r).is_ok() && r[0] == b
}

#[test]
fn live_connections_survive_a_denying_reload_new_ones_do_not() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sfl").expect("namespaces");
    p.settle(false);
    let a = apply(&p, OPEN);
    assert_eq!(a["stateful"], true, "{a}");
    // A TCP echo server in b, serving every connection.
    tcp_echo_server(&p.b, (Ipv4Addr::UNSPECIFIED, 5401).into());
    let udp_srv = in_ns_io(&p.b, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5402))).unwrap();
    udp_srv.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let dst = SocketAddr::from((B4, 5401));
    let mut live = in_ns_io(&p.a, move || TcpStream::connect_timeout(&dst, Duration::from_secs(2))).expect("connect before the reload");
    live.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(echo_byte(&mut live, 1));
    let flow = in_ns_io(&p.a, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect((B4, 5402))?;
        Ok(s)
    })
    .unwrap();
    flow.send(b"1").unwrap();
    let mut buf = [0u8; 8];
    assert!(udp_srv.recv(&mut buf).is_ok(), "UDP before the reload");

    // Deny both ports: the live connection and the live UDP flow keep going...
    apply(&p, DENY_5401);
    for b in 2..12 {
        assert!(echo_byte(&mut live, b), "the established TCP connection survives the reload (byte {b})");
    }
    for _ in 0..5 {
        flow.send(b"2").unwrap();
        assert!(udp_srv.recv(&mut buf).is_ok(), "the established UDP flow survives the reload");
    }
    // ...while new ones are classified against the new rules.
    let fresh = in_ns_io(&p.a, move || TcpStream::connect_timeout(&dst, Duration::from_millis(1500)));
    assert!(fresh.is_err(), "a new TCP connection to 5401 is refused");
    in_ns_io(&p.a, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        for _ in 0..3 {
            let _ = s.send_to(b"3", (B4, 5402));
        }
        Ok(())
    })
    .unwrap();
    assert!(udp_srv.recv(&mut buf).is_err(), "a new UDP flow to 5402 is dropped");
    let c: Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"])).unwrap();
    let est = c["state"]["established"]["packets"].as_u64().unwrap();
    assert!(est >= 15, "the old connection's packets pass as established, charged to no rule: {c}");
    assert!(c["rules"][0]["packets"].as_u64().unwrap() >= 1, "the new SYN counts for no-5401: {c}");
    assert_eq!(c["rules"][1]["packets"], 3, "exactly the new flow's datagrams count for no-5402: {c}");
    assert!(c["state"]["flows"]["tracked"].as_u64().unwrap() >= 2, "{c}");
    // The table outlives a reload that changes nothing about it, and a resize.
    apply(&p, &format!("{DENY_5401}[state]\nmax_flows = 1024\n"));
    assert!(echo_byte(&mut live, 42), "the connection survives a resize of the table");
    let text = p.egress_ok(&["counters", "--iface", &p.a_if]);
    assert!(text.contains("(established)") && text.contains("stateful:"), "{text}");
    // Stateless again: the denying rules now cut the old connection too.
    apply(&p, &DENY_5401.replace("stateful = true\n", ""));
    assert!(!echo_byte(&mut live, 43), "without stateful mode the rules apply to every packet");
}

fn udp_echo_server(ns: &str, port: u16) {
    let s = in_ns_io(ns, move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))).unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            let _ = s.send_to(&b[..n], from);
        }
    });
}

/// From b: a TCP exchange with a:port and a UDP exchange with a:uport; a ping.
fn inbound(p: &Pair, port: u16, uport: u16) -> (bool, bool, u32) {
    let dst = SocketAddr::from((A4, port));
    let tcp = in_ns_io(&p.b, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_millis(1500))?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        Ok(echo_byte(&mut s, 7))
    })
    .unwrap_or(false);
    let udp = in_ns_io(&p.b, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.send_to(b"x", (A4, uport))?;
        let mut b = [0u8; 8];
        Ok(s.recv(&mut b).is_ok())
    })
    .unwrap_or(false);
    (tcp, udp, egress_tests::ping_from(&p.b, A4.into(), 2))
}

#[test]
fn inbound_connections_are_answered_under_default_deny() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sfi").expect("namespaces");
    p.static_neighbours().unwrap();
    // a's services: TCP echo on 6001, UDP echo on 6002.
    tcp_echo_server(&p.a, (Ipv4Addr::UNSPECIFIED, 6001).into());
    udp_echo_server(&p.a, 6002);
    // b must know a's MAC too (a's ARP replies are not IP: they pass anyway).
    let _ = egress_tests::ping_from(&p.b, A4.into(), 1);

    // Stateless default deny: a cannot answer.
    apply(&p, "default_policy = \"deny\"\n");
    assert_eq!(inbound(&p, 6001, 6002), (false, false, 0), "stateless: replies are new egress traffic, denied");
    // Stateful default deny: replies to connections opened from b pass as ESTABLISHED.
    let a = apply(&p, "stateful = true\ndefault_policy = \"deny\"\n");
    assert_eq!(a["companion"], "tc-ingress (tcx)", "{a}");
    assert_eq!(inbound(&p, 6001, 6002), (true, true, 2), "stateful: a answers what b opened");
    let c: Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"])).unwrap();
    assert!(c["state"]["flows"]["inserted_inbound"].as_u64().unwrap() >= 3, "{c}");
    assert!(c["state"]["established"]["packets"].as_u64().unwrap() >= 4, "{c}");
    // But a still cannot open anything itself.
    assert!(!p.tcp(false, 6003), "a's own new connections are still denied");
    // status says the companion is there.
    let st: Value = serde_json::from_str(&p.egress_ok(&["status", "--json"])).unwrap();
    let me = st["interfaces"].as_array().unwrap().iter().find(|i| i["netns"] == p.a.as_str()).unwrap().clone();
    assert_eq!((me["stateful"].as_bool(), me["companion"].as_str()), (Some(true), Some("tc-ingress (tcx)")), "{st}");
}

#[test]
fn icmp_errors_about_tracked_connections_are_related() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sfr").expect("namespaces");
    p.static_neighbours().unwrap();
    let _ = egress_tests::ping_from(&p.b, A4.into(), 1);
    // b sends to a closed UDP port on a; a's "port unreachable" reaches b only if it passes a's egress.
    let refused = |p: &Pair| {
        in_ns_io(&p.b, || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.connect((A4, 6999))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.send(b"x")?;
            let mut b = [0u8; 8];
            Ok(matches!(s.recv(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused))
        })
        .unwrap()
    };
    apply(&p, "default_policy = \"deny\"\n");
    assert!(!refused(&p), "stateless default deny drops the ICMP error");
    apply(&p, "stateful = true\ndefault_policy = \"deny\"\n");
    let counters = || -> Value { serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"])).unwrap() };
    let before = counters();
    assert!(refused(&p), "the ICMP error quotes a tracked (inbound) UDP flow: RELATED, passes");
    let c = counters();
    assert_eq!(c["state"]["related"]["packets"], 1, "{c}");
    assert_eq!(c["default"]["packets"], before["default"]["packets"], "nothing was charged to the default policy: {c}");
}

#[test]
fn a_full_table_still_enforces_every_rule() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sff").expect("namespaces");
    p.settle(false);
    apply(
        &p,
        "stateful = true\ndefault_policy = \"allow\"\n[state]\nmax_flows = 16\n[[rule]]\nname = \"no-5501\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"5501\"\n[[rule]]\nname = \"ok-5502\"\naction = \"allow\"\nprotocol = \"udp\"\nports = \"5502\"\n",
    );
    let srv = |port| {
        let s = in_ns_io(&p.b, move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    };
    let (s1, s2) = (srv(5501), srv(5502));
    // 400 flows (a new source port each), far more than the table holds.
    in_ns_io(&p.a, || {
        for _ in 0..200 {
            for port in [5501u16, 5502] {
                let c = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                let _ = c.send_to(b"x", (B4, port));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    })
    .unwrap();
    let count = |s: &UdpSocket| {
        let mut n = 0;
        let mut b = [0u8; 8];
        while s.recv(&mut b).is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!((count(&s1), count(&s2)), (0, 200), "denied flows never pass, allowed ones always do");
    let c: Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"])).unwrap();
    assert_eq!(c["rules"][0]["packets"], 200, "every denied datagram counts for its rule: {c}");
    // A source port the kernel hands out again while its entry is alive continues that flow.
    let allowed = c["rules"][1]["packets"].as_u64().unwrap() + c["state"]["established"]["packets"].as_u64().unwrap();
    assert_eq!(allowed, 200, "every allowed datagram counts once, for its rule or as established: {c}");
    let f = &c["state"]["flows"];
    assert!(f["evicted"].as_u64().unwrap() >= 100, "the table was full and made room: {c}");
    assert_eq!(f["table_full"], f["evicted"]);
    assert!(f["entries"].as_u64().unwrap() <= 64, "{c}");
}

#[test]
fn bad_state_settings_are_errors_and_change_nothing() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sfb").expect("namespaces");
    p.settle(false);
    apply(&p, DENY_5401);
    let f = temp_file(
        "bad.toml",
        "stateful = \"yes\"\ndefault_policy = \"allow\"\n[state]\ntcp_establised = 5\nudp = 0\nmax_flows = 100000000\n",
    );
    let o = p.egress(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for want in [
        ":1: field 'stateful': must be true or false",
        ":4: field 'state.tcp_establised': unknown key 'tcp_establised' (did you mean 'tcp_established'?)",
        ":5: field 'state.udp': 0 is out of range",
        ":6: field 'state.max_flows': 100000000 is out of range",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(p.udp(false, 5402, 2), 0, "the previous (stateful) rules stay enforced");
}

#[test]
fn ipv6_connections_end_on_fin_both_ways_and_expire_when_idle() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sf6").expect("namespaces");
    p.settle(true);
    // Short closing and UDP timeouts; established TCP lives far longer than the test.
    let state = "[state]\ntcp_established = 600\ntcp_closing = 2\nudp = 2\n";
    let deny = DENY_5401.replace("5401", "5601").replace("5402", "5602");
    apply(&p, &format!("{OPEN}{state}"));
    // Echoes until a closes, then closes too (b's FIN).
    tcp_echo_server(&p.b, (Ipv6Addr::UNSPECIFIED, 5601).into());
    let udp_srv = in_ns_io(&p.b, || UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 5602))).unwrap();
    udp_srv.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let dst = SocketAddr::from((B6, 5601));
    let mut live = in_ns_io(&p.a, move || TcpStream::connect_timeout(&dst, Duration::from_secs(2))).expect("connect over IPv6");
    live.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(echo_byte(&mut live, 1));
    let flow = in_ns_io(&p.a, || {
        let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
        s.connect((B6, 5602))?;
        Ok(s)
    })
    .unwrap();
    let mut buf = [0u8; 8];
    flow.send(b"1").unwrap();
    assert!(udp_srv.recv(&mut buf).is_ok(), "UDP over IPv6 before the reload");

    // A denying reload: both IPv6 flows go on, a new connection is refused.
    apply(&p, &format!("{deny}{state}"));
    assert!(echo_byte(&mut live, 2), "the IPv6 TCP connection survives the reload");
    flow.send(b"2").unwrap();
    assert!(udp_srv.recv(&mut buf).is_ok(), "the IPv6 UDP flow survives the reload");
    let fresh = in_ns_io(&p.a, move || TcpStream::connect_timeout(&dst, Duration::from_millis(1500)));
    assert!(fresh.is_err(), "a new IPv6 connection to 5601 is refused");
    let counters = || -> Value { serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"])).unwrap() };
    let c = counters();
    assert_eq!(c["state"]["flows"]["tracked"], 2, "the TCP connection and the UDP flow: {c}");

    // a closes, b closes in turn: FIN both ways puts the connection on the
    // closing timeout (2 s instead of 600 s); the UDP flow idles past its 2 s.
    live.shutdown(std::net::Shutdown::Both).unwrap();
    drop(live);
    std::thread::sleep(Duration::from_millis(2600));
    let c = counters();
    assert_eq!(c["state"]["flows"]["tracked"], 0, "the ended connection and the idle flow are no longer tracked: {c}");
    // The idle flow's next datagram is a new flow, classified by the rules in force.
    flow.send(b"3").unwrap();
    assert!(udp_srv.recv(&mut buf).is_err(), "after its idle timeout the flow meets the denying rule");
    let c = counters();
    assert!(c["state"]["flows"]["expired"].as_u64().unwrap() >= 1, "{c}");
    assert_eq!(c["rules"][1]["packets"], 1, "the expired flow's datagram counts for no-5602: {c}");
}

/// egress in a's namespace with TC programs attached as clsact filters (the path
/// kernels before 6.6 take); succeeds and prints nothing on stderr.
fn egress_clsact(p: &Pair, args: &[&str]) -> String {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &p.a])
        .arg(egress_tests::egress_bin())
        .args(args)
        .env("EGRESS_TC_ATTACH", "clsact")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.is_empty(), "egress {args:?}: {}\n{err}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// egress's clsact filters on a's interface in one direction.
fn filters(p: &Pair, dir: &str) -> usize {
    let o = std::process::Command::new("tc").args(["-n", &p.a, "filter", "show", "dev", &p.a_if, dir]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(" bpf ") && l.contains("egress_")).count()
}

#[test]
fn clsact_filters_when_tcx_is_not_used() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sfc").expect("namespaces");
    p.static_neighbours().unwrap();
    let _ = egress_tests::ping_from(&p.b, A4.into(), 1);
    udp_echo_server(&p.a, 6102);
    let apply = |rules: &str| -> Value {
        let f = temp_file("rules.toml", rules);
        serde_json::from_str(&egress_clsact(&p, &["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap(), "--json"])).unwrap()
    };
    let a = apply("stateful = true\ndefault_policy = \"deny\"\n");
    assert_eq!((a["mode"].as_str(), a["companion"].as_str()), (Some("clsact"), Some("tc-ingress (clsact)")), "{a}");
    assert_eq!((filters(&p, "egress"), filters(&p, "ingress")), (1, 1), "the classifier and the companion");
    // The companion filter follows what b opens: answered under default deny.
    let (_, udp, ping) = inbound(&p, 6101, 6102);
    assert!(udp && ping == 2, "stateful on clsact: a answers b (udp {udp}, ping {ping})");
    assert_eq!(p.udp(false, 6103, 2), 0, "a's own new flows are denied");
    // Replacements swap the programs inside the same filters: never a second one.
    let rules = format!("stateful = true\n{}", egress_tests::deny_udp(&[6104]));
    for _ in 0..2 {
        apply(&rules);
        assert_eq!((filters(&p, "egress"), filters(&p, "ingress")), (1, 1), "replaced in place");
    }
    assert_eq!((p.udp(false, 6104, 2), p.udp(false, 6105, 2)), (0, 2), "the new rules are enforced");
    // Stateless again: the companion's filter goes, the classifier's stays.
    let a = apply(&egress_tests::deny_udp(&[6104]));
    assert!(a["companion"].is_null(), "{a}");
    assert_eq!((filters(&p, "egress"), filters(&p, "ingress")), (1, 0));
    egress_clsact(&p, &["detach", "--iface", &p.a_if]);
    assert_eq!((filters(&p, "egress"), filters(&p, "ingress")), (0, 0), "detach removes the filter");
    assert_eq!(p.udp(false, 6104, 2), 2, "nothing enforced after detach");
}

/// The pins of the attachment on a's interface (tc-egress): its key is a's
/// network namespace cookie and the interface's index.
fn pin_dir(p: &Pair) -> std::path::PathBuf {
    let cookie = in_ns_io(&p.a, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let mut c = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: c and len are valid for getsockopt's writes.
        let r = unsafe {
            libc::getsockopt(std::os::fd::AsRawFd::as_raw_fd(&s), libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, (&raw mut c).cast(), &mut len)
        };
        if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(c) }
    })
    .unwrap();
    let o = std::process::Command::new("ip").args(["-n", &p.a, "-j", "link", "show", "dev", &p.a_if]).output().unwrap();
    let l: Value = serde_json::from_slice(&o.stdout).unwrap();
    std::path::PathBuf::from(format!("/sys/fs/bpf/egress/{cookie}-{}", l[0]["ifindex"]))
}

/// bpf(2) with an attribute block.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 9]) -> i64 {
    // SAFETY: attr is a zeroed bpf_attr of 72 bytes, filled for `cmd`.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<[u64; 9]>()) }
}

/// Pins, at `path`, an LRU hash shaped like the connection table of releases
/// before the bucketed one (16-byte key, 16-byte value) holding `entries`.
fn pin_legacy_table(path: &std::path::Path, entries: &[([u8; 16], [u8; 16])]) {
    const MAP_CREATE: libc::c_long = 0;
    const MAP_UPDATE_ELEM: libc::c_long = 2;
    const OBJ_PIN: libc::c_long = 6;
    const LRU_HASH: u64 = 9;
    let mut a = [0u64; 9];
    a[0] = LRU_HASH | 16 << 32;
    a[1] = 16 | 1024 << 32;
    let fd = bpf(MAP_CREATE, &mut a);
    assert!(fd >= 0, "create an LRU hash: {}", std::io::Error::last_os_error());
    for (k, v) in entries {
        let mut a = [0u64; 9];
        (a[0], a[1], a[2]) = (fd as u64, k.as_ptr() as u64, v.as_ptr() as u64);
        assert_eq!(bpf(MAP_UPDATE_ELEM, &mut a), 0, "{}", std::io::Error::last_os_error());
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut a = [0u64; 9];
    (a[0], a[1]) = (name.as_ptr() as u64, fd as u64);
    assert_eq!(bpf(OBJ_PIN, &mut a), 0, "pin {}: {}", path.display(), std::io::Error::last_os_error());
    // SAFETY: fd is the map's, no longer needed (the pin holds it).
    unsafe { libc::close(fd as i32) };
}

/// A release before the bucketed connection table kept connections in an LRU
/// hash (`conn/mN`): the first apply of this one carries them over, so a
/// connection tracked then survives a reload that denies it, and the old
/// table's pins go.
#[test]
fn connections_of_an_lru_table_are_carried_over() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("sflg").expect("namespaces");
    p.settle(false);
    apply(&p, OPEN);
    tcp_echo_server(&p.b, (Ipv4Addr::UNSPECIFIED, 5401).into());
    let dst = SocketAddr::from((B4, 5401));
    let mut live = in_ns_io(&p.a, move || TcpStream::connect_timeout(&dst, Duration::from_secs(2))).expect("connect");
    live.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(echo_byte(&mut live, 1));
    // As the old release left it: the connection only in an LRU table, no
    // bucketed table pinned.
    let conn = pin_dir(&p).join("conn");
    assert!(conn.join("c65536").exists(), "the bucketed table is pinned at {}", conn.display());
    std::fs::remove_dir_all(conn.join("c65536")).unwrap();
    let local = live.local_addr().unwrap();
    let SocketAddr::V4(l) = local else { panic!("{local}") };
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&l.ip().octets());
    key[4..8].copy_from_slice(&B4.octets());
    key[8..10].copy_from_slice(&l.port().to_be_bytes());
    key[10..12].copy_from_slice(&5401u16.to_be_bytes());
    key[12] = egress_common::PCLASS_TCP;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is valid for clock_gettime's write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).to_ne_bytes());
    value[8..12].copy_from_slice(&egress_common::CONN_REPLIED.to_ne_bytes());
    pin_legacy_table(&conn.join("m65536").join(egress_common::MAP_CONN_V4), &[(key, value)]);
    let c: Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"])).unwrap();
    assert_eq!(c["state"]["flows"]["tracked"], 1, "counters read the old table until the next apply: {c}");

    apply(&p, DENY_5401);
    assert!(echo_byte(&mut live, 2), "the connection from the old table passes as established");
    assert!(!conn.join("m65536").exists(), "the old table's pins are gone");
    assert!(conn.join("c65536").join(egress_common::MAP_CONN_V4).exists());
    let fresh = in_ns_io(&p.a, move || TcpStream::connect_timeout(&dst, Duration::from_millis(1500)));
    assert!(fresh.is_err(), "a new connection to 5401 is refused");
}
