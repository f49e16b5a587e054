//! Hot reloads: a rule set that changes one rule at a time is written into
//! the idle half of the loaded program's maps and made live by one EPOCH write.
//! 1,000 random single-rule changes (insert, remove, change, at random positions
//! of a 1,000-rule set) under continuous UDP traffic: every change takes the
//! hot path, no packet sees a mix of rule sets, and every packet is counted
//! once; a change writes only the map entries that differ from what the idle
//! half holds. The first changes come from `egress apply` (a new process each
//! time), the rest from `egress run`, which adopts the attachment. Needs root.

use std::collections::HashMap;

use egress_tests::{Daemon, Pair, replace_file, temp_file, traffic::UdpLoad};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

/// X and Y: the "flip" rule's ports (each change flips their verdict); Z is
/// denied and W allowed by every rule set.
const PORTS: [u16; 4] = [6001, 6002, 6003, 6004];
const FILLERS: usize = 1000;

/// A filler: never matches the traffic, but shares its candidate lists (UDP
/// to any destination) or sits beside it in the tables.
fn filler(k: usize) -> String {
    match k % 3 {
        0 => format!("[[rule]]\nname = \"f{k}\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"{}\"\n", 20_000 + k),
        1 => format!(
            "[[rule]]\nname = \"f{k}\"\naction = \"deny\"\ndst = [\"198.51.100.{}/32\"]\nprotocol = \"tcp\"\nports = \"{}\"\n",
            k % 256,
            1000 + k
        ),
        _ => format!("[[rule]]\nname = \"f{k}\"\naction = \"allow\"\ndst = [\"203.0.113.{}/32\"]\nprotocol = \"udp\"\n", k % 256),
    }
}

/// The fillers with the flip rule (`Some((position, action))`) among them,
/// then z, w and the rule that otherwise allows X and Y.
fn text(fillers: &[String], flip: Option<(usize, &str)>) -> String {
    let mut s = String::from("default_policy = \"allow\"\n");
    for (i, f) in fillers.iter().enumerate() {
        if let Some((at, action)) = flip
            && at == i
        {
            // A destination prefix (the peer's network): the service recompiles
            // only what the flip rule reaches (compile/incremental.rs).
            s.push_str(&format!(
                "[[rule]]\nname = \"flip\"\naction = \"{action}\"\ndst = \"192.0.2.0/24\"\nprotocol = \"udp\"\nports = \"6001-6002\"\n"
            ));
        }
        s.push_str(f);
    }
    s.push_str("[[rule]]\nname = \"z\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"6003\"\n");
    s.push_str("[[rule]]\nname = \"w\"\naction = \"allow\"\nprotocol = \"udp\"\nports = \"6004\"\n");
    s.push_str("[[rule]]\nname = \"xy\"\naction = \"allow\"\nprotocol = \"udp\"\nports = \"6001-6002\"\n");
    s
}

#[test]
fn a_thousand_single_rule_changes_under_traffic_are_hot_atomic_and_exact() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("hot").expect("namespaces");
    p.static_neighbours().expect("static neighbours");
    p.settle(false);
    let fillers: Vec<String> = (0..FILLERS).map(filler).collect();
    let f = temp_file("hot.toml", &text(&fillers, None));
    let apply = || -> Value {
        let out = p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap(), "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"))
    };
    assert_eq!(apply()["path"], "load");
    let load = UdpLoad::start(&p, &PORTS);

    let mut rng = StdRng::seed_from_u64(0x407);
    // The flip rule: where it sits among the fillers, and its action.
    let mut flip: Option<(usize, &str)> = None;
    // Final counts of removed (or changed) flip rules, by action.
    let mut gone: HashMap<String, u64> = HashMap::new();
    let mut enforced_us: Vec<u64> = Vec::new();
    // Map entries written by each change.
    let mut written: Vec<u64> = Vec::new();
    // How `egress run` compiled each change ("incremental" or "whole").
    let mut compiles: HashMap<String, usize> = HashMap::new();
    let (changes, by_apply) = (1000, 200);
    let cfg = temp_file("hot-run.toml", &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\n", p.a_if, f.display()));
    let mut daemon: Option<Daemon> = None;
    for i in 0..changes {
        flip = match flip {
            None => Some((rng.gen_range(0..=FILLERS), "deny")),
            Some((_, "deny")) if rng.gen_bool(0.5) => None,
            Some((at, "deny")) => Some((at, "allow")),
            Some((at, _)) => Some((at, "deny")),
        };
        let v = if i < by_apply {
            std::fs::write(&f, text(&fillers, flip)).unwrap();
            let v = apply();
            for r in v["removed"].as_array().unwrap() {
                assert_eq!(r["name"], "flip", "change {i}: only the flip rule changes: {v}");
                *gone.entry(r["action"].as_str().unwrap().to_string()).or_default() += r["packets"].as_u64().unwrap();
            }
            v
        } else {
            let d = daemon.get_or_insert_with(|| {
                let d = Daemon::start(&p.a, &cfg, &[]);
                d.wait_msg("rules already enforced; adopted", 1);
                d
            });
            replace_file(&f, &text(&fillers, flip));
            let v = d.wait_for("replaced", i + 1 - by_apply, |v| v["message"] == "rules replaced");
            *compiles.entry(v["compile"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            v
        };
        assert_eq!(v["path"], "hot", "change {i}: {v}");
        enforced_us.push(v["enforced_us"].as_u64().unwrap_or_else(|| panic!("change {i}: {v}")));
        written.push(v["entries_written"].as_u64().unwrap_or_else(|| panic!("change {i}: {v}")));
        assert_eq!(v["kept"].as_u64(), Some(FILLERS as u64 + 3), "change {i}: every other rule keeps its counters: {v}");
    }
    // The first change fills half 1, zeros since the load: the whole rule
    // set. Every later one rewrites only the entries that differ (none when
    // it restores the rule set of two changes ago; the port ranges after an
    // inserted rule's lists when it inserts one).
    let whole = written[0];
    let mut diff = written[1..].to_vec();
    diff.sort_unstable();
    let (median, most) = (diff[diff.len() / 2], diff[diff.len() - 1]);
    eprintln!("entries written per change: {whole} (the first, into a zeroed half); then {median} (median), {most} (most)");
    assert!(median * 10 < whole && most * 3 < whole, "a change rewrote {median} (median), {most} (most) entries; a whole half is {whole}");
    // The service compiles the adopted file when it starts, so the first
    // reload after adopting builds on it as every later one does. A
    // recompile that would not fit the loaded maps (an inserted flip rule's
    // inherited list is new each time, and what old values used stays until
    // a whole compile) compiles whole instead: 17 of 800 in the last run.
    eprintln!("egress run compiled: {compiles:?}");
    assert!(compiles.get("incremental").copied().unwrap_or(0) >= (changes - by_apply) * 8 / 10, "recompiled: {compiles:?}");
    let (sent, got) = load.stop();
    let d = daemon.expect("egress run made changes");
    // The last change's final counts are logged just after its "rules replaced".
    std::thread::sleep(std::time::Duration::from_millis(300));
    for r in d.log().iter().filter(|v| v["message"] == "rule removed; final counts") {
        assert_eq!(r["rule"], "flip", "only the flip rule changes: {r}");
        *gone.entry(r["action"].as_str().unwrap().to_string()).or_default() += r["packets"].as_u64().unwrap();
    }
    assert!(d.log().iter().all(|v| v["level"] != "ERROR"), "egress run logged an error:\n{}", d.dump());
    let (_, _, c) = p.counters();
    let live: HashMap<String, u64> =
        c["rules"].as_array().unwrap().iter().map(|r| (r["name"].as_str().unwrap().to_string(), r["packets"].as_u64().unwrap())).collect();
    let mut flips = gone.clone();
    if let Some((_, action)) = flip {
        *flips.entry(action.to_string()).or_default() += live["flip"];
    }
    enforced_us.sort_unstable();
    eprintln!(
        "{changes} changes; enforced in {} us median, {} us worst; sent {sent:?}, received {got:?}; flip {flips:?}; z {} w {} xy {}",
        enforced_us[changes / 2],
        enforced_us[changes - 1],
        live["z"],
        live["w"],
        live["xy"]
    );
    let (deny, allow) = (flips.get("deny").copied().unwrap_or(0), flips.get("allow").copied().unwrap_or(0));
    assert!(sent.iter().all(|n| *n > 1000), "traffic ran during the changes: {sent:?}");
    assert_eq!(got[2], 0, "a datagram to Z (denied by every rule set) arrived");
    assert_eq!(got[3], sent[3], "a datagram to W (allowed by every rule set) was lost");
    assert_eq!(live["z"], sent[2], "z counted every datagram to Z once");
    assert_eq!(live["w"], sent[3], "w counted every datagram to W once");
    assert_eq!(deny + allow + live["xy"], sent[0] + sent[1], "X and Y: every datagram counted once, by flip or xy");
    assert_eq!(allow + live["xy"], got[0] + got[1], "what arrived to X and Y is what the allowing rules counted");
    assert!(deny > 0 && got[0] + got[1] > 0, "both verdicts were in force for X and Y");
}

/// A program another build of egress loaded (an upgrade: its maps may be laid
/// out otherwise, its code may read them otherwise) is replaced, never written
/// into: the state names the object each program was loaded from. The next
/// change after the replacement is hot again. Also traffic: the replacement's
/// rules are the ones enforced.
#[test]
fn a_program_another_build_loaded_is_replaced_not_reloaded_hot() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("hobj").expect("namespaces");
    p.settle(false);
    let f = temp_file("obj.toml", &egress_tests::deny_udp(&[7001]));
    let apply = |text: &str| -> Value {
        replace_file(&f, text);
        let out = p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap(), "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"))
    };
    let first = apply(&egress_tests::deny_udp(&[7001]));
    assert_eq!(first["path"], "load", "{first}");
    assert_eq!(apply(&egress_tests::deny_udp(&[7001, 7002]))["path"], "hot");
    // The state as an egress of another build leaves it: another object's digest.
    // (The test's interface name is its own: its state file is the one naming it.)
    let path = std::fs::read_dir("/run/egress")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| {
            f.extension().is_some_and(|x| x == "json")
                && std::fs::read_to_string(f)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .is_some_and(|v| v["iface"] == p.a_if.as_str())
        })
        .expect("the attachment's state file");
    let mut st: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(st["halves"]["object"].as_str().is_some_and(|o| o.starts_with("sha256:")), "{}", st["halves"]);
    st["halves"]["object"] = Value::from("sha256:another-build");
    std::fs::write(&path, st.to_string()).unwrap();
    let v = apply(&egress_tests::deny_udp(&[7002]));
    assert_eq!(v["path"], "full", "{v}");
    assert!(v["full_because"].as_str().is_some_and(|w| w.contains("another build of egress")), "{v}");
    assert_eq!((p.udp(false, 7001, 5), p.udp(false, 7002, 5)), (5, 0), "the replacement's rules are enforced");
    assert_eq!(apply(&egress_tests::deny_udp(&[7001]))["path"], "hot");
    assert_eq!((p.udp(false, 7001, 5), p.udp(false, 7002, 5)), (0, 5));
}
