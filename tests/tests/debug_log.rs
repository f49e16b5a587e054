//! Debug mode (`apply --debug`): the classifier's debug twin logs, through
//! aya-log, why it drops packets it cannot parse; `egress log` streams those
//! lines. Real malformed frames sent out of a veth in a namespace.

use egress_tests::{Pair, deny_udp, need_root, send_frame};

/// An Ethernet frame to the broadcast address carrying `ip` (IPv4 EtherType).
fn frame(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// An IPv4 header claiming a header length of 16 bytes (IHL 4): impossible.
fn bad_ihl() -> Vec<u8> {
    let mut h = vec![0x44, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2];
    h.extend_from_slice(&[0; 8]);
    frame(&h)
}

#[test]
fn debug_mode_logs_why_unparseable_packets_are_dropped() {
    need_root!("network namespaces");
    let p = Pair::new("dbg").unwrap();
    let rules = egress_tests::temp_file("rules.toml", &deny_udp(&[9]));
    let rules = rules.to_str().unwrap();
    // Without --debug there is no log to read: a clear error.
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", rules]);
    let o = p.egress(&["log", "--iface", &p.a_if, "--count", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("applied without --debug"), "{}", String::from_utf8_lossy(&o.stderr));

    let out = p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", rules, "--debug", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["debug"], true, "{v}");
    // The debug twin enforces the same rules.
    p.static_neighbours().unwrap();
    assert_eq!(p.udp(false, 9, 3), 0);
    assert_eq!(p.udp(false, 10, 3), 3);
    // A bad header and a truncated one (the EtherType says IPv4, 6 bytes follow).
    assert!(!send_frame(&p.a, &p.a_if, bad_ihl()).unwrap(), "dropped");
    assert!(!send_frame(&p.a, &p.a_if, frame(&[0x45, 0, 0, 20, 0, 0])).unwrap(), "dropped");
    let out = p.egress_ok(&["log", "--iface", &p.a_if, "--json", "--count", "2"]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["message"], "dropped a 42 byte packet: bad header (an IP header field that cannot be right)", "{out}");
    assert_eq!(lines[1]["message"], "dropped a 20 byte packet: truncated (a header it needs ends past the end of the packet)", "{out}");
    assert_eq!(
        (lines[0]["iface"].as_str(), lines[0]["hook"].as_str(), lines[0]["level"].as_str()),
        (Some(p.a_if.as_str()), Some("tc-egress"), Some("info"))
    );
    // Counted as well, as without debug mode.
    let (_, _, c) = p.counters();
    assert_eq!(
        (c["unclassified"]["bad_header_dropped"].as_u64(), c["unclassified"]["truncated_dropped"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );
    // Status says so.
    let st: serde_json::Value = serde_json::from_str(&p.egress_ok(&["status", "--json"])).unwrap();
    let mine = st["interfaces"].as_array().unwrap().iter().find(|i| i["iface"] == p.a_if.as_str()).cloned().unwrap();
    assert_eq!(mine["debug"], true, "{st}");
    assert!(p.egress_ok(&["status"]).contains(", debug"));
}

/// `egress run` with `debug = true` logs the program's lines itself.
#[test]
fn the_service_logs_debug_lines() {
    need_root!("network namespaces");
    let p = Pair::new("dbgrun").unwrap();
    let rules = egress_tests::temp_file("rules.toml", &deny_udp(&[9]));
    let config = egress_tests::temp_file(
        "egress.toml",
        &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\ndebug = true\n", p.a_if, rules.display()),
    );
    let d = egress_tests::Daemon::start(&p.a, &config, &[]);
    d.wait_msg("rules applied", 1);
    assert!(!send_frame(&p.a, &p.a_if, bad_ihl()).unwrap(), "dropped");
    let line = d.wait_for("the debug line", 1, |l| l["target"] == "egress::ebpf");
    assert_eq!(line["message"], "dropped a 42 byte packet: bad header (an IP header field that cannot be right)", "{line}");
    assert_eq!(line["iface"], p.a_if.as_str(), "{line}");
}
