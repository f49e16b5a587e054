//! `egress counters --reset` and `--watch` with real traffic: a reset starts
//! the chosen rows from zero (each from one snapshot, nothing lost), survives a
//! replacement of the rule set, and says what it reset; `--watch` prints a frame
//! per interval with per-second rates, as a table or JSON lines. Needs root.

use egress_tests::{Pair, deny_udp, temp_file};
use serde_json::Value;

fn counts(p: &Pair) -> Vec<u64> {
    let (mut c, def, _) = p.counters();
    c.push(def);
    c
}

#[test]
fn reset_starts_rows_from_zero_and_survives_replacement() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("rst").expect("namespaces");
    p.static_neighbours().unwrap();
    let f = temp_file("rules.toml", &deny_udp(&[6201, 6202]));
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    assert_eq!((p.udp(false, 6201, 3), p.udp(false, 6202, 4)), (0, 0));
    assert_eq!(&counts(&p)[..2], &[3, 4]);
    // One rule: what it counted is reported, the other keeps its count.
    let v: Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--reset", "--rule", "no-6201", "--json"])).unwrap();
    assert_eq!(v["reset"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!((v["reset"][0]["name"].as_str(), v["reset"][0]["packets"].as_u64()), (Some("no-6201"), Some(3)), "{v}");
    assert_eq!(p.udp(false, 6201, 2), 0);
    assert_eq!(&counts(&p)[..2], &[2, 4], "no-6201 counts from the reset, no-6202 untouched");
    // A replacement that keeps both rules keeps the reset too.
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    assert_eq!(p.udp(false, 6201, 1), 0);
    assert_eq!(&counts(&p)[..2], &[3, 4], "carried across the replacement, reset included");
    // Everything, in text: each row and the default policy.
    let text = p.egress_ok(&["counters", "--iface", &p.a_if, "--reset"]);
    assert!(text.starts_with("reset 3 counter(s)") && text.contains("no-6202") && text.contains("(default)"), "{text}");
    assert_eq!(&counts(&p)[..2], &[0, 0]);
    let o = p.egress(&["counters", "--iface", &p.a_if, "--reset", "--rule", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no rule named 'nope'"));
}

#[test]
fn watch_prints_frames_with_rates() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("wat").expect("namespaces");
    p.static_neighbours().unwrap();
    let f = temp_file("rules.toml", &deny_udp(&[6203]));
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    // Traffic for the rule while watching: 20 datagrams a second for 2 s.
    let (a, b) = (p.a.clone(), p.b.clone());
    let sender = std::thread::spawn(move || {
        for _ in 0..20 {
            egress_tests::udp(&a, &b, egress_tests::B4.into(), 6203, 2);
        }
    });
    let text = p.egress_ok(&["counters", "--iface", &p.a_if, "--watch", "--interval", "0.5", "--count", "3"]);
    sender.join().unwrap();
    assert_eq!(text.matches("Ctrl-C stops").count(), 3, "{text}");
    assert!(text.contains("PKTS/S") && text.contains("BYTES/S"), "{text}");
    let rates: Vec<u64> =
        text.lines().filter(|l| l.starts_with("1  no-6203")).filter_map(|l| l.split_whitespace().nth(5)?.parse().ok()).collect();
    assert!(rates.len() == 2 && rates.iter().any(|r| *r > 0), "per-second rates of the rule's packets: {text}");
    let json = p.egress_ok(&["counters", "--iface", &p.a_if, "--watch", "--interval", "0.2", "--count", "2", "--json"]);
    let lines: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["rules"][0]["name"], "no-6203");
}

#[test]
fn last_hit_shows_when_a_rule_last_matched_and_survives_replacement() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("lhit").expect("namespaces");
    p.static_neighbours().unwrap();
    let f = temp_file("rules.toml", &deny_udp(&[6211, 6212]));
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    let json = |p: &Pair| -> Value { p.counters().2 };
    assert!(json(&p)["rules"][0]["last_hit"].is_null(), "never hit: null");
    assert_eq!(p.udp(false, 6211, 20), 0);
    let v = json(&p);
    let hit = v["rules"][0]["last_hit"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
    assert!(v["rules"][1]["last_hit"].is_null(), "{v}");
    // RFC 3339 UTC, within a minute of now.
    let now = egress::dataplane::now_unix();
    assert!(hit.ends_with('Z') && hit.len() == 20, "{hit}");
    let secs = |s: &str| -> u64 {
        let out = std::process::Command::new("date").args(["-u", "-d", s, "+%s"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    assert!(now.abs_diff(secs(&hit)) < 60, "{hit} vs now {now}");
    let table = p.egress_ok(&["counters", "--iface", &p.a_if]);
    assert!(table.contains("LAST HIT"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("1  no-6211") && l.contains("s ago")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("2  no-6212") && l.contains("never")), "{table}");
    // Kept across a replacement, before any new packet.
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    let kept = json(&p)["rules"][0]["last_hit"].as_str().map(secs);
    assert!(kept.is_some_and(|k| k.abs_diff(secs(&hit)) <= 1), "{kept:?} vs {hit}");
}
