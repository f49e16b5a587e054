//! Real traffic between network namespaces through the real `egress` binary.
//! Needs root; each test owns its namespace pair and deletes it on exit.

use egress_tests::{Pair, temp_file};

const RULES: &str = r#"
default_policy = "allow"

[[rule]]
name = "no-smtp"
action = "deny"
protocol = "tcp"
ports = "25"

[[rule]]
name = "dns"
action = "allow"
dst = ["192.0.2.2/32", "2001:db8:1::2/128"]
protocol = "udp"
ports = "53"

[[rule]]
name = "no-high-udp"
action = "deny"
protocol = "udp"
ports = "5000-5999"

[[rule]]
name = "no-ping"
action = "deny"
dst = "192.0.2.0/24"
protocol = "icmp"
icmp_type = 8

[[rule]]
name = "no-ping6"
action = "deny"
dst = "2001:db8:1::/64"
protocol = "icmpv6"
icmp_type = 128
"#;

/// This pair's entry in `egress status --json` (other tests may run in parallel).
fn own_status(p: &Pair) -> serde_json::Value {
    let out = p.egress_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == p.a_if.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{} not in status: {out}", p.a_if))
}

fn settle(p: &Pair) {
    // Resolve neighbours (ARP, NDP) both ways before anything is asserted.
    for v6 in [false, true] {
        p.settle(v6);
    }
}

#[test]
fn enforces_tcp_udp_icmp_over_ipv4_and_ipv6_with_exact_counters() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("enf").expect("namespaces");
    settle(&p);
    let o = p.apply(RULES);
    assert!(o.status.success(), "apply failed: {}", String::from_utf8_lossy(&o.stderr));

    // UDP: denied range drops everything, allowed rule and default pass everything.
    assert_eq!(p.udp(false, 5001, 7), 0);
    assert_eq!(p.udp(true, 5999, 4), 0);
    assert_eq!(p.udp(false, 53, 6), 6);
    assert_eq!(p.udp(true, 53, 3), 3);
    assert_eq!(p.udp(false, 6000, 5), 5, "port 6000 is outside 5000-5999: default allow");
    assert_eq!(p.udp(true, 4999, 2), 2);
    // ICMP / ICMPv6 echo requests are dropped.
    assert_eq!(p.ping(false, 3), 0);
    assert_eq!(p.ping(true, 2), 0);

    let (rules, default, json) = p.counters();
    assert_eq!(rules[1], 9, "dns: 6 IPv4 + 3 IPv6 datagrams; {json}");
    assert_eq!(rules[2], 11, "no-high-udp: 7 + 4; {json}");
    assert_eq!(rules[3], 3, "no-ping; {json}");
    assert_eq!(rules[4], 2, "no-ping6; {json}");
    assert!(default >= 7, "default carried at least the 5 + 2 datagrams; {json}");
    assert_eq!(rules[0], 0, "no TCP sent yet");

    // TCP: port 25 is refused both ways, others connect.
    assert!(!p.tcp(false, 25));
    assert!(!p.tcp(true, 25));
    assert!(p.tcp(false, 8080));
    assert!(p.tcp(true, 8080));
    let (rules, _, json) = p.counters();
    assert!(rules[0] >= 2, "each blocked connect sent at least one SYN; {json}");

    // The JSON contract.
    assert_eq!(json["iface"], p.a_if.as_str());
    let names: Vec<&str> = json["rules"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["no-smtp", "dns", "no-high-udp", "no-ping", "no-ping6"]);
    assert_eq!(json["rules"][0]["action"], "deny");
    assert_eq!(json["rules"][1]["action"], "allow");
    assert!(json["rules"][2]["bytes"].as_u64().unwrap() > 11 * 28);
    assert_eq!(json["default"]["action"], "allow");

    // The table names every rule and the default row.
    let table = p.egress_ok(&["counters", "--iface", &p.a_if]);
    for n in ["no-smtp", "dns", "no-high-udp", "no-ping6", "(default)"] {
        assert!(table.contains(n), "{table}");
    }
}

#[test]
fn default_deny_with_allow_rules() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("deny").expect("namespaces");
    settle(&p);
    let o = p.apply(
        r#"
default_policy = "deny"
[[rule]]
name = "web"
dst = ["192.0.2.2", "2001:db8:1::2"]
protocol = "tcp"
ports = "80-443"
[[rule]]
name = "udp-from-a"
src = "192.0.2.1/32"
protocol = "udp"
ports = "9000"
[[rule]]
name = "ndp"
protocol = "icmpv6"
"#,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(p.tcp(false, 443));
    assert!(p.tcp(true, 80));
    assert!(!p.tcp(false, 444));
    assert_eq!(p.udp(false, 9000, 4), 4);
    assert_eq!(p.udp(true, 9000, 3), 0, "udp-from-a is IPv4 only");
    assert_eq!(p.udp(false, 9001, 3), 0);
    assert_eq!(p.ping(false, 2), 0, "default deny");
    let (rules, default, json) = p.counters();
    assert_eq!(rules[1], 4, "{json}");
    assert!(default >= 3 + 3 + 2, "{json}");
}

#[test]
fn detach_restores_traffic_and_removes_pins() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("det").expect("namespaces");
    settle(&p);
    assert!(p.apply(RULES).status.success());
    assert_eq!(p.udp(false, 5001, 3), 0);
    let st = own_status(&p);
    let pins = std::path::PathBuf::from(st["pinned"].as_str().unwrap());
    assert!(pins.join("link").exists(), "link pinned at {}", pins.display());
    assert_eq!((st["hook"].as_str(), st["mode"].as_str(), st["attached"].as_bool()), (Some("tc-egress"), Some("tcx"), Some(true)));

    let out = p.egress_ok(&["detach", "--iface", &p.a_if]);
    assert!(out.contains("detached"), "{out}");
    assert_eq!(p.udp(false, 5001, 3), 3);
    assert_eq!(p.ping(false, 2), 2);
    assert!(!pins.exists());
    let o = p.egress(&["counters", "--iface", &p.a_if]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no rules loaded"));
    let o = p.egress(&["detach", "--iface", &p.a_if]);
    assert_eq!(o.status.code(), Some(1), "detaching twice is an error");
}

#[test]
fn bad_rule_file_exits_2_and_keeps_the_old_rules() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("bad").expect("namespaces");
    settle(&p);
    assert!(p.apply(RULES).status.success());
    let before = own_status(&p);
    assert_eq!(before["rules"], 5);

    let bad = "default_policy = \"allow\"\n[[rule]]\nname = \"oops\"\nprotocol = \"udp\"\nports = \"6000-5000\"\n";
    let o = p.apply(bad);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rules.toml:5: rule 'oops', field 'ports'"), "{err}");
    // Still enforced, same rule set.
    assert_eq!(p.udp(false, 5001, 3), 0);
    assert_eq!(own_status(&p), before, "status (digest, generation, load time) unchanged");
    let (rules, _, _) = p.counters();
    assert_eq!(rules.len(), 5);
    assert_eq!(rules[2], 3);

    // `check` reports the same without root privileges being needed.
    let f = temp_file("bad.toml", bad);
    let o = std::process::Command::new(egress_tests::egress_bin()).args(["check", "--rules"]).arg(&f).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    // Missing interface: exit 1, names it.
    let good = temp_file("good.toml", RULES);
    let o = p.egress(&["apply", "--iface", "nosuchif0", "--rules", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosuchif0"));
}

/// `--flow-cache`: the slot count is reported as loaded, and with the cache off
/// (every packet classified in full) or tiny (flows evicting each other) the
/// verdicts and counters are exactly those of the default.
#[test]
fn flow_cache_size_from_the_cli() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("fc").expect("namespaces");
    settle(&p);
    let file = temp_file("fc.toml", RULES);
    let f = file.to_string_lossy().into_owned();
    // The same rules each time: their counters carry over the replacements.
    for (round, (arg, slots)) in [("0", 0), ("3", 4), ("1000", 1024)].into_iter().enumerate() {
        let out = p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", &f, "--flow-cache", arg, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["flow_cache"], slots, "--flow-cache {arg}: {out}");
        assert_eq!(own_status(&p)["flow_cache"], slots);
        // Interleaved flows, so that a small cache keeps replacing slots.
        for _ in 0..3 {
            assert_eq!(p.udp(false, 5001, 2), 0, "--flow-cache {arg}");
            assert_eq!(p.udp(false, 53, 2), 2, "--flow-cache {arg}");
            assert_eq!(p.udp(true, 5002, 1), 0, "--flow-cache {arg}");
            assert_eq!(p.udp(false, 7003, 1), 1, "--flow-cache {arg}");
        }
        let (rules, _, json) = p.counters();
        let n = round as u64 + 1;
        assert_eq!((rules[1], rules[2]), (6 * n, 9 * n), "--flow-cache {arg}: dns, no-high-udp; {json}");
    }
}

#[test]
fn apply_again_replaces_the_rule_set_in_place() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("rep").expect("namespaces");
    settle(&p);
    assert!(p.apply(RULES).status.success());
    assert_eq!(p.udp(false, 5001, 2), 0);
    assert_eq!(p.udp(false, 7001, 2), 2);
    let o =
        p.apply("default_policy = \"allow\"\n[[rule]]\nname = \"only-7k\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"7000-7999\"\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("replaced"));
    assert_eq!(p.udp(false, 5001, 2), 2);
    assert_eq!(p.udp(false, 7001, 4), 0);
    let (rules, _, json) = p.counters();
    assert_eq!(rules, vec![4], "{json}");
    assert_eq!(json["generation"], 2);
    // Only one generation of pins remains.
    let pinned = own_status(&p)["pinned"].as_str().unwrap().to_string();
    let dirs: Vec<_> = std::fs::read_dir(&pinned).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(dirs.len(), 3, "link, the events ring buffer and one generation: {dirs:?}");
}

#[test]
fn replacement_under_traffic_never_lets_a_packet_through() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("swap").expect("namespaces");
    settle(&p);
    // Two rule sets that both deny udp/5555, compiled differently.
    let a = "default_policy = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"5555\"\n";
    let b = "default_policy = \"deny\"\n[[rule]]\nname = \"y\"\naction = \"allow\"\nprotocol = \"udp\"\nports = \"1-5554\"\n[[rule]]\nname = \"z\"\naction = \"allow\"\nprotocol = \"icmpv6\"\n";
    assert!(p.apply(a).status.success());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p_a = p.a.clone();
    let s2 = stop.clone();
    let sender = std::thread::spawn(move || {
        egress_tests::in_ns(&p_a, move || {
            let c = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut n = 0u32;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c.send_to(b"x", (egress_tests::B4, 5555));
                n += 1;
            }
            n
        })
        .unwrap()
    });
    let server = egress_tests::in_ns_io(&p.b, || std::net::UdpSocket::bind("0.0.0.0:5555")).unwrap();
    server.set_nonblocking(true).unwrap();
    for i in 0..6 {
        assert!(p.apply(if i % 2 == 0 { b } else { a }).status.success());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut buf = [0u8; 8];
    assert!(server.recv_from(&mut buf).is_err(), "a datagram to udp/5555 got through during replacement ({sent} sent)");
    assert!(sent > 100, "the sender ran during the swaps");
}
