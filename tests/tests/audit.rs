//! Audit mode with real traffic: a deny rule in audit mode counts what it would
//! drop and lets it pass; a file in audit mode does the same for every deny and
//! the default policy; switching the rule to enforce keeps its counters and
//! drops; `counters` and `explain` say "audit". Needs root.

use egress_tests::Pair;
use serde_json::Value;

fn apply(p: &Pair, rules: &str) {
    p.apply_ok(rules);
}

fn counters(p: &Pair) -> Value {
    p.counters().2
}

const RULES: &str = "default_policy = \"allow\"\n[[rule]]\nname = \"trial\"\naction = \"deny\"\nmode = \"audit\"\nprotocol = \"udp\"\nports = \"6301\"\n[[rule]]\nname = \"no-6302\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"6302\"\n";

#[test]
fn audit_rules_count_and_pass_then_enforce() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("aud").expect("namespaces");
    p.static_neighbours().unwrap();
    apply(&p, RULES);
    assert_eq!((p.udp(false, 6301, 3), p.udp(false, 6302, 3)), (3, 0), "the audit rule passes, the enforcing one drops");
    let c = counters(&p);
    assert_eq!((c["rules"][0]["audit"].as_bool(), c["rules"][0]["packets"].as_u64()), (Some(true), Some(3)), "{c}");
    assert_eq!((c["rules"][1]["audit"].as_bool(), c["rules"][1]["packets"].as_u64()), (Some(false), Some(3)), "{c}");
    let table = p.egress_ok(&["counters", "--iface", &p.a_if]);
    assert!(table.lines().any(|l| l.starts_with("1  trial") && l.contains("deny (audit)")), "{table}");
    let v = p.explain_udp(6301, None);
    assert_eq!(
        (v["rule"].as_str(), v["action"].as_str(), v["audit"].as_bool(), v["agree"].as_bool()),
        (Some("trial"), Some("deny"), Some(true), Some(true)),
        "{v}"
    );
    // Rolled out: the same rule enforcing keeps its counters and now drops.
    apply(&p, &RULES.replace("mode = \"audit\"\n", ""));
    assert_eq!(p.udp(false, 6301, 2), 0, "enforced");
    let c = counters(&p);
    assert_eq!((c["rules"][0]["audit"].as_bool(), c["rules"][0]["packets"].as_u64()), (Some(false), Some(5)), "{c}");
}

#[test]
fn a_file_in_audit_mode_passes_every_deny_and_the_default() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("audf").expect("namespaces");
    p.static_neighbours().unwrap();
    apply(
        &p,
        "mode = \"audit\"\ndefault_policy = \"deny\"\n[[rule]]\nname = \"no-6311\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"6311\"\n[[rule]]\nname = \"dns\"\naction = \"allow\"\nprotocol = \"udp\"\nports = \"53\"\n",
    );
    assert_eq!((p.udp(false, 6311, 2), p.udp(false, 6312, 2)), (2, 2), "nothing is dropped in audit mode");
    assert!(p.tcp(false, 6313), "TCP too (the default policy is audited)");
    let c = counters(&p);
    assert_eq!((c["rules"][0]["audit"].as_bool(), c["rules"][0]["packets"].as_u64()), (Some(true), Some(2)), "{c}");
    assert_eq!(c["default"]["audit"], true, "{c}");
    assert!(c["default"]["packets"].as_u64().unwrap() >= 4, "the default policy counts what it would have dropped: {c}");
}
