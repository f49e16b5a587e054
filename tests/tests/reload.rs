//! Replacements that lose nothing: counters keyed by rule identity survive any
//! number of replacements, and every packet is counted exactly once across them,
//! with real traffic between namespaces. Needs root.

use std::{collections::HashMap, time::Duration};

use egress_tests::{Pair, temp_file, traffic::UdpLoad};
use serde_json::Value;

fn settle(p: &Pair) {
    p.static_neighbours().expect("static neighbours");
    p.settle(false);
}

fn apply_json(p: &Pair, rules: &std::path::Path) -> Value {
    let out = p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", rules.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"))
}

fn by_name(v: &Value) -> HashMap<String, (u64, String)> {
    v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), (r["packets"].as_u64().unwrap(), r["since"].as_str().unwrap().to_string())))
        .collect()
}

/// Unchanged rules keep counts and start time wherever they move; a rule whose
/// match or action changed under the same name starts again; removed rules are
/// reported with their final counts; the default row survives while the default
/// policy stays the same.
#[test]
fn counters_follow_rule_identity_across_replacements() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("carry").expect("namespaces");
    settle(&p);
    let one = temp_file(
        "one.toml",
        r#"default_policy = "allow"
[[rule]]
name = "keep"
action = "deny"
protocol = "udp"
ports = "5001"
[[rule]]
name = "change"
action = "deny"
protocol = "udp"
ports = "5002"
[[rule]]
name = "drop-me"
action = "allow"
protocol = "udp"
ports = "5003"
"#,
    );
    let v = apply_json(&p, &one);
    assert_eq!((v["replaced"].as_bool(), v["removed"].as_array().map(Vec::len)), (Some(false), Some(0)), "{v}");
    assert_eq!(p.udp(false, 5001, 4), 0);
    assert_eq!(p.udp(false, 5002, 3), 0);
    assert_eq!(p.udp(false, 5003, 2), 2);
    assert_eq!(p.udp(false, 7001, 5), 5);
    let (_, def_before, c1) = p.counters();
    let before = by_name(&c1);
    assert_eq!((before["keep"].0, before["change"].0, before["drop-me"].0), (4, 3, 2), "{c1}");
    std::thread::sleep(Duration::from_millis(1100)); // a later "since" for new rules

    // "keep" moves to the end; "change" gets another port; "drop-me" goes; "new" comes.
    let two = temp_file(
        "two.toml",
        r#"default_policy = "allow"
[[rule]]
name = "new"
action = "deny"
protocol = "udp"
ports = "5004"
[[rule]]
name = "change"
action = "deny"
protocol = "udp"
ports = "5005"
[[rule]]
name = "keep"
action = "deny"
protocol = "udp"
ports = "5001"
"#,
    );
    let v = apply_json(&p, &two);
    assert_eq!((v["replaced"].as_bool(), v["kept"].as_u64()), (Some(true), Some(1)), "{v}");
    let mut removed: Vec<(String, u64)> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["packets"].as_u64().unwrap()))
        .collect();
    removed.sort();
    assert_eq!(removed, [("change".to_string(), 3), ("drop-me".to_string(), 2)], "{v}");
    assert!(v["removed"][0]["since"].as_str().unwrap().ends_with('Z'), "{v}");

    assert_eq!(p.udp(false, 5001, 2), 0);
    assert_eq!(p.udp(false, 5005, 1), 0);
    assert_eq!(p.udp(false, 5004, 1), 0);
    let (_, def_after, c2) = p.counters();
    let after = by_name(&c2);
    assert_eq!(after["keep"].0, 6, "4 before + 2 after: {c2}");
    assert_eq!(after["keep"].1, before["keep"].1, "same rule, same start: {c2}");
    assert_eq!(after["change"].0, 1, "changed match starts again: {c2}");
    assert_ne!(after["change"].1, before["change"].1, "{c2}");
    assert_eq!(after["new"].0, 1, "{c2}");
    assert!(def_after >= def_before, "the default row survives: {def_before} -> {def_after}");
    assert_eq!(c2["default"]["since"], c1["default"]["since"], "{c2}");
    assert_eq!(c2["generation"], 2);

    // The default policy changes: its row starts again.
    let three = temp_file("three.toml", "default_policy = \"deny\"\n[[rule]]\nname = \"nd\"\nprotocol = \"icmpv6\"\n");
    apply_json(&p, &three);
    assert_eq!(p.udp(false, 7002, 3), 0);
    let (_, def, c3) = p.counters();
    assert_eq!(def, 3, "fresh default row: {c3}");
}

const SET_A: &str = r#"default_policy = "allow"
[[rule]]
name = "x-deny"
action = "deny"
protocol = "udp"
ports = "6001"
[[rule]]
name = "y-allow"
action = "allow"
protocol = "udp"
ports = "6002"
[[rule]]
name = "z"
action = "deny"
protocol = "udp"
ports = "6003"
[[rule]]
name = "w"
action = "allow"
protocol = "udp"
ports = "6004"
"#;

/// The other verdicts for X and Y, the same for Z and W, in another order (so
/// slots move and the compiled maps differ).
const SET_B: &str = r#"default_policy = "allow"
[[rule]]
name = "w"
action = "allow"
protocol = "udp"
ports = "6004"
[[rule]]
name = "z"
action = "deny"
protocol = "udp"
ports = "6003"
[[rule]]
name = "y-deny"
action = "deny"
protocol = "udp"
ports = "6002"
[[rule]]
name = "x-allow"
action = "allow"
protocol = "udp"
ports = "6001"
"#;

const PORTS: [u16; 4] = [6001, 6002, 6003, 6004];

/// 120 replacements alternating between two rule sets whose verdicts differ,
/// under continuous UDP traffic to four ports: X and Y (denied by one set,
/// allowed by the other), Z (denied by both) and W (allowed by both). No packet
/// to Z arrives, every packet to W arrives, and the per-rule counters (live plus
/// the final counts reported for removed rules) add up exactly to what was sent
/// to each port, and to what arrived for the allowing rules.
#[test]
fn replacements_under_load_are_atomic_and_count_every_packet_once() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("atom").expect("namespaces");
    settle(&p);
    let a = temp_file("a.toml", SET_A);
    let b = temp_file("b.toml", SET_B);
    apply_json(&p, &a);

    let load = UdpLoad::start(&p, &PORTS);
    let mut removed: HashMap<String, u64> = HashMap::new();
    let swaps = 120;
    for i in 0..swaps {
        let v = apply_json(&p, if i % 2 == 0 { &b } else { &a });
        for r in v["removed"].as_array().unwrap() {
            *removed.entry(r["name"].as_str().unwrap().to_string()).or_default() += r["packets"].as_u64().unwrap();
        }
        assert_eq!(v["kept"], 2, "z and w keep their counters: {v}");
    }
    let (sent, got) = load.stop();
    let (_, _, c) = p.counters();
    let live: HashMap<String, u64> =
        c["rules"].as_array().unwrap().iter().map(|r| (r["name"].as_str().unwrap().to_string(), r["packets"].as_u64().unwrap())).collect();
    let total = |name: &str| live.get(name).copied().unwrap_or(0) + removed.get(name).copied().unwrap_or(0);
    eprintln!("{swaps} replacements; sent {sent:?}, received {got:?}; live {live:?}; removed {removed:?}");
    assert!(sent.iter().all(|n| *n > 1000), "traffic ran during the swaps: {sent:?}");
    assert_eq!(got[2], 0, "a datagram to Z (denied by both sets) arrived");
    assert_eq!(got[3], sent[3], "a datagram to W (allowed by both sets) was lost");
    assert_eq!(total("z"), sent[2], "z counted every datagram to Z once");
    assert_eq!(total("w"), sent[3], "w counted every datagram to W once");
    assert_eq!(total("x-deny") + total("x-allow"), sent[0], "X: every datagram counted once by x-deny or x-allow");
    assert_eq!(total("y-allow") + total("y-deny"), sent[1], "Y: every datagram counted once");
    assert_eq!(total("x-allow"), got[0], "what arrived to X is what x-allow counted");
    assert_eq!(total("y-allow"), got[1], "what arrived to Y is what y-allow counted");
    assert!(total("x-deny") > 0 && total("x-allow") > 0, "both verdicts were in force for X");
}
