//! Deny events with real traffic: `egress events --json` streams denied and
//! audited packets in the JSON contract, rate-limited per rule in the kernel
//! (a burst, then one event carrying the count held back); with no reader the
//! ring buffer fills, events are counted as lost and enforcement and counting
//! go on. Needs root.

use std::{io::BufRead as _, process::Stdio, time::Duration};

use egress_tests::{B4, Pair, egress_bin, temp_file};
use serde_json::Value;

const RULES: &str = "default_policy = \"allow\"\n[events]\nrate = 5\nburst = 3\n[[rule]]\nname = \"no-6501\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"6501\"\n[[rule]]\nname = \"trial-6502\"\naction = \"deny\"\nmode = \"audit\"\nprotocol = \"udp\"\nports = \"6502\"\n[[rule]]\nname = \"no-ping\"\naction = \"deny\"\nprotocol = \"icmp\"\nicmp_type = 8\n";

fn apply(p: &Pair, rules: &str) {
    p.apply_ok(rules);
}

#[test]
fn events_stream_in_the_json_contract_rate_limited_per_rule() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("evt").expect("namespaces");
    p.static_neighbours().unwrap();
    apply(&p, RULES);
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &p.a])
        .arg(egress_bin())
        .args(["events", "--iface", &p.a_if, "--json", "--count", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A burst of 10 to the denied port: 3 events (the burst), 7 held back.
    assert_eq!(p.udp(false, 6501, 10), 0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(p.udp(false, 6501, 1), 0, "after the quiet spell: one event carrying the 7");
    assert_eq!(p.udp(false, 6502, 1), 1, "audited: passes, reported");
    assert_eq!(p.ping(false, 1), 0);
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let events: Vec<Value> = out.lines().map_while(Result::ok).map(|l| serde_json::from_str(&l).unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success() && events.len() == 6, "{status}: {events:#?}");
    for e in &events {
        for key in
            ["time", "iface", "rule", "action", "src", "dst", "protocol", "sport", "dport", "icmp_type", "icmp_code", "len", "suppressed"]
        {
            assert!(e.get(key).is_some(), "key {key} missing: {e}");
        }
        let t = e["time"].as_str().unwrap();
        assert!(t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T', "RFC 3339 UTC: {t}");
        assert_eq!(
            (e["iface"].as_str(), e["action"].as_str(), e["src"].as_str()),
            (Some(p.a_if.as_str()), Some("deny"), Some("192.0.2.1"))
        );
        assert_eq!(e["dst"], B4.to_string());
    }
    let udp: Vec<&Value> = events.iter().filter(|e| e["rule"] == "no-6501").collect();
    let held: Vec<u64> = udp.iter().map(|e| e["suppressed"].as_u64().unwrap()).collect();
    assert_eq!(held, vec![0, 0, 0, 7], "a burst of 3, then one event with the 7 held back: {events:#?}");
    let u = udp[0];
    assert_eq!((u["protocol"].as_str(), u["dport"].as_u64(), u["icmp_type"].is_null()), (Some("udp"), Some(6501), true), "{u}");
    assert!(u["sport"].as_u64().is_some_and(|s| s > 0) && u["len"].as_u64().is_some_and(|l| l > 28), "{u}");
    let audit = events.iter().find(|e| e["rule"] == "trial-6502").expect("the audited packet");
    assert_eq!(audit["audit"], true, "{audit}");
    let icmp = events.iter().find(|e| e["rule"] == "no-ping").expect("the ping");
    assert_eq!(
        (icmp["protocol"].as_str(), icmp["icmp_type"].as_u64(), icmp["icmp_code"].as_u64()),
        (Some("icmp"), Some(8), Some(0)),
        "{icmp}"
    );
    assert!(icmp["sport"].is_null() && icmp["dport"].is_null(), "{icmp}");
    let c = p.counters().2;
    assert_eq!((c["events"]["sent"].as_u64(), c["events"]["suppressed"].as_u64()), (Some(6), Some(7)), "{c}");
}

#[test]
fn without_a_reader_events_are_lost_and_enforcement_goes_on() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("evl").expect("namespaces");
    p.static_neighbours().unwrap();
    apply(
        &p,
        "default_policy = \"allow\"\n[events]\nrate = 100000\nburst = 100000\n[[rule]]\nname = \"no-6511\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"6511\"\n",
    );
    // Far more denied packets than the 256 KiB ring buffer holds (64-byte events).
    let (a, n) = (p.a.clone(), 8000u32);
    egress_tests::in_ns(&a, move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for _ in 0..n {
            let _ = s.send_to(b"x", (B4, 6511));
        }
    })
    .unwrap();
    let c = p.counters().2;
    assert_eq!(c["rules"][0]["packets"].as_u64(), Some(n as u64), "every packet counted: {c}");
    let (sent, lost) = (c["events"]["sent"].as_u64().unwrap(), c["events"]["lost"].as_u64().unwrap());
    assert!(lost > 0 && sent + lost == n as u64, "sent {sent} + lost {lost} = {n}: {c}");
    assert_eq!(p.udp(false, 6511, 2), 0, "still enforcing");
    assert_eq!(p.udp(false, 6512, 2), 2);
    // --events-rate 0 turns them off (the file says 100000).
    let f = temp_file(
        "same.toml",
        "default_policy = \"allow\"\n[events]\nrate = 100000\nburst = 100000\n[[rule]]\nname = \"no-6511\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"6511\"\n",
    );
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap(), "--events-rate", "0"]);
    assert_eq!(p.udp(false, 6511, 3), 0);
    let c2 = p.counters().2;
    assert_eq!(
        c2["events"]["sent"].as_u64().unwrap() + c2["events"]["lost"].as_u64().unwrap(),
        n as u64 + 2,
        "no events with --events-rate 0 (2 from the check above): {c2}"
    );
}
