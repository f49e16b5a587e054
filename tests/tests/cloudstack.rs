//! CloudStack import: every field and edge of `listEgressFirewallRules` as the
//! API and cloudmonkey return it (fixtures in tests/fixtures/cloudstack/), the
//! default policy from the flag or an offering/network listing, CloudStack's
//! validation with ids and fields in the errors, the command line (exit codes,
//! nothing written on error, atomic -o), and an imported set enforced on real
//! traffic with `apply --cloudstack`.

use std::{path::PathBuf, process::Command};

use egress::{
    import::cloudstack::{ImportError, Options, import},
    rules::{self, Action, Protocol},
};
use egress_tests::{Pair, egress_bin, need_root, temp_file};

fn fixture(name: &str) -> (String, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cloudstack").join(name);
    (name.to_string(), std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

fn policy(p: Action) -> Options {
    Options { default_policy: Some(p), ..Options::default() }
}

fn imported(name: &str, o: &Options) -> (egress::import::cloudstack::Imported, rules::RuleSet) {
    let (file, text) = fixture(name);
    let i = import(&file, &text, o).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let rs = rules::parse("imported.toml", &i.toml).unwrap_or_else(|e| panic!("{e}\n{}", i.toml));
    (i, rs)
}

#[test]
fn every_field_of_the_api_response() {
    let (i, rs) = imported("api.json", &policy(Action::Allow));
    // Default allow: every CloudStack egress rule denies (CloudStack's inversion).
    assert_eq!(rs.default_policy, Action::Allow);
    assert!(rs.rules.iter().all(|r| r.action == Action::Deny));
    assert_eq!(i.rules, 7);
    assert_eq!(
        i.inactive,
        vec![
            ("7d0a6f1e-1111-4c4e-9a1e-000000000007".to_string(), "Revoke".to_string()),
            ("7d0a6f1e-1111-4c4e-9a1e-000000000008".to_string(), "Add".to_string())
        ]
    );
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let r = &rs.rules;
    // Names carry the CloudStack id; the API's order is kept.
    assert_eq!(r[0].name, "cs-7d0a6f1e-1111-4c4e-9a1e-000000000001");
    // Ports as strings; an empty destcidrlist is any destination.
    assert_eq!((r[0].protocol, r[0].ports.clone(), r[0].dst.clone()), (Protocol::Tcp, Some(vec![(25, 25)]), None));
    assert_eq!(r[0].src, Some(vec![net("10.1.1.0/24")]));
    // "UDP" in any case, several source and destination CIDRs (with spaces), a range.
    assert_eq!((r[1].protocol, r[1].ports.clone()), (Protocol::Udp, Some(vec![(5000, 5010)])));
    assert_eq!(r[1].src, Some(vec![net("10.1.1.0/24"), net("10.1.2.0/24")]));
    assert_eq!(r[1].dst, Some(vec![net("203.0.113.0/24"), net("198.51.100.7/32")]));
    // ICMP -1/-1: any ICMP; type and code as strings.
    assert_eq!((r[2].protocol, r[2].icmp_type, r[2].icmp_code), (Protocol::Icmp, None, None));
    assert_eq!((r[3].icmp_type, r[3].icmp_code), (Some(8), Some(0)));
    // Protocol "All"; a start port without an end port is one port.
    assert_eq!((r[4].protocol, r[4].dst.clone()), (Protocol::All, Some(vec![net("192.0.2.0/24")])));
    assert_eq!(r[5].ports, Some(vec![(443, 443)]));
    assert!(i.toml.contains("# CloudStack rule 7d0a6f1e-1111-4c4e-9a1e-000000000002: udp ports 5000-5010 from 10.1.1.0/24,10.1.2.0/24 to 203.0.113.0/24,198.51.100.7/32"));
    assert!(i.toml.contains(
        "# Not imported, state not Active: 7d0a6f1e-1111-4c4e-9a1e-000000000007 (Revoke), 7d0a6f1e-1111-4c4e-9a1e-000000000008 (Add)."
    ));

    // Default deny: every rule allows.
    let (_, rs) = imported("api.json", &policy(Action::Deny));
    assert_eq!(rs.default_policy, Action::Deny);
    assert!(rs.rules.iter().all(|r| r.action == Action::Allow));
    // One network's rules only.
    let (i, rs) = imported("api.json", &Options { network: Some("net-a".into()), ..policy(Action::Allow) });
    assert_eq!((i.rules, i.other_networks), (6, 1));
    assert!(rs.rules.iter().all(|r| r.src.as_ref().is_some_and(|s| s[0].to_string().starts_with("10.1."))));
}

#[test]
fn cloudmonkey_output_bare_arrays_and_empty_responses() {
    let (i, rs) = imported("cloudmonkey.json", &policy(Action::Allow));
    assert_eq!((i.rules, rs.rules[0].name.as_str(), rs.rules[0].ports.clone()), (1, "cs-c1", Some(vec![(22, 22)])));
    // A bare array; an id given as a number; an empty cidrlist is the guest network.
    let (file, text) = fixture("bare.json");
    let Err(ImportError::Rules(p)) = import(&file, &text, &policy(Action::Deny)) else { panic!("an empty cidrlist needs --guest-cidr") };
    assert_eq!((p[0].id.as_deref(), p[0].field), (Some("41"), "cidrlist"));
    assert!(p[0].message.contains("--guest-cidr"), "{}", p[0].message);
    let (i, rs) = imported("bare.json", &Options { guest_cidr: Some("10.1.1.0/24".parse().unwrap()), ..policy(Action::Deny) });
    assert_eq!((i.rules, rs.rules[0].name.as_str()), (1, "cs-41"));
    assert_eq!(rs.rules[0].src.as_ref().unwrap()[0].to_string(), "10.1.1.0/24");
    assert!(i.toml.contains("# (empty cidrlist: the guest network 10.1.1.0/24)"));
    let (i, rs) = imported("empty.json", &policy(Action::Deny));
    assert_eq!((i.rules, rs.rules.len(), rs.default_policy), (0, 0, Action::Deny));
    // Not a rule listing at all.
    assert!(
        matches!(import("x.json", "{\"listnetworksresponse\": {}}", &policy(Action::Deny)), Err(ImportError::Input(m)) if m.contains("not a listEgressFirewallRules response"))
    );
    assert!(matches!(import("x.json", "{", &policy(Action::Deny)), Err(ImportError::Input(m)) if m.starts_with("x.json: not valid JSON")));
    // Host bits (hand-made lists): narrowed and said so.
    let text = r#"[{"id": "h", "protocol": "tcp", "startport": 1, "endport": 1024, "cidrlist": "10.1.1.7/24"}]"#;
    let i = import("h.json", text, &policy(Action::Allow)).unwrap();
    assert!(i.toml.contains("src = [\"10.1.1.0/24\"]") && i.toml.contains("# (10.1.1.7/24 narrowed to 10.1.1.0/24)"), "{}", i.toml);
}

#[test]
fn the_default_policy_comes_from_the_flag_or_an_offering() {
    let (_, offerings) = fixture("offerings.json");
    let (_, networks) = fixture("networks.json");
    let (i, _) = imported("api.json", &Options { offering: Some(("offerings.json".into(), offerings)), ..Options::default() });
    assert_eq!(i.default_policy, Action::Allow);
    assert!(i.policy_from.contains("egressdefaultpolicy = true"), "{}", i.policy_from);
    let o = Options { offering: Some(("networks.json".into(), networks.clone())), network: Some("net-a".into()), ..Options::default() };
    let (i, rs) = imported("api.json", &o);
    assert_eq!((i.default_policy, rs.rules[0].action), (Action::Deny, Action::Allow));
    // Two networks and no --network: which one?
    let (file, text) = fixture("api.json");
    let o = Options { offering: Some(("networks.json".into(), networks)), ..Options::default() };
    assert!(matches!(import(&file, &text, &o), Err(ImportError::Input(m)) if m.contains("2 networks: say which with --network ID")));
    // Neither: the policy is needed.
    assert!(
        matches!(import(&file, &text, &Options::default()), Err(ImportError::Input(m)) if m.contains("--default-policy allow|deny, or --offering FILE"))
    );
}

#[test]
fn cloudstack_validation_names_the_rule_id_and_field() {
    let (file, text) = fixture("invalid.json");
    let Err(ImportError::Rules(p)) = import(&file, &text, &policy(Action::Deny)) else { panic!("invalid rules must be refused") };
    let got: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "rule 2 (id bad-range), field 'endport': 80 is below startport 90",
            "rule 3 (id bad-port), field 'startport': 70000 is not a port (1..65535)",
            "rule 3 (id bad-port), field 'endport': 70000 is not a port (1..65535)",
            "rule 4 (id bad-icmp), field 'icmptype': 300 is out of range (-1 for any, or 0..255)",
            "rule 5 (id bad-cidr), field 'cidrlist': '10.1.1.0/33' is not a CIDR",
            "rule 6 (id ports-on-icmp), field 'startport': ports go with tcp and udp only, not icmp",
            "rule 7 (id bad-proto), field 'protocol': must be tcp, udp, icmp or all, not \"gre\"",
        ]
    );
    let (i, rs) = imported("invalid.json", &Options { skip_invalid: true, ..policy(Action::Deny) });
    assert_eq!((i.rules, rs.rules[0].name.as_str(), i.skipped_rules()), (1, "cs-ok-1", 6));
    assert!(i.toml.contains("# Skipped (invalid): rule 5 (id bad-cidr), field 'cidrlist'"));
    // Ports with protocol all, ICMP fields with tcp, a family mismatch.
    let text = r#"[{"id": "a", "protocol": "all", "startport": 1, "cidrlist": "10.0.0.0/8"},
                   {"id": "b", "protocol": "tcp", "startport": 1, "icmptype": 8, "cidrlist": "10.0.0.0/8"},
                   {"id": "c", "protocol": "udp", "startport": "x", "cidrlist": "10.0.0.0/8"},
                   {"id": "d", "protocol": "tcp", "cidrlist": "10.0.0.0/8", "destcidrlist": "2001:db8::/32"}]"#;
    let Err(ImportError::Rules(p)) = import("v.json", text, &policy(Action::Deny)) else { panic!("refused") };
    let got: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "rule 1 (id a), field 'startport': ports go with tcp and udp only, not all",
            "rule 2 (id b), field 'icmptype': ICMP type and code go with protocol icmp only",
            "rule 3 (id c), field 'startport': must be a whole number, not \"x\"",
            "rule 4 (id d), field 'destcidrlist': no address family in common with cidrlist: the rule could never match",
        ]
    );
}

fn egress(args: &[&str]) -> std::process::Output {
    Command::new(egress_bin()).args(args).output().unwrap()
}

#[test]
fn the_command_line_writes_nothing_on_error_and_atomically_otherwise() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cloudstack");
    let out = temp_file("out.toml", "");
    std::fs::remove_file(&out).unwrap();
    let (o, inv) = (out.to_str().unwrap(), dir.join("invalid.json"));
    let r = egress(&["import", "cloudstack", "--rules", inv.to_str().unwrap(), "--default-policy", "deny", "-o", o]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("6 invalid rule(s) (7 problem(s)), nothing written") && err.contains("rule 2 (id bad-range), field 'endport'"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    let api = dir.join("api.json");
    let r = egress(&["import", "cloudstack", "--rules", api.to_str().unwrap(), "--default-policy", "allow", "-o", o, "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["rules"].as_u64(), v["default"].as_str(), v["inactive"].as_array().map(Vec::len)),
        (Some(7), Some("allow"), Some(2)),
        "{v}"
    );
    // What it wrote is a rule file `check` accepts.
    let r = egress(&["check", "--rules", o]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Stdout without -o; the policy is required.
    let r = egress(&["import", "cloudstack", "--rules", api.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("default egress policy is needed"));
}

/// An imported set enforced on real traffic: CloudStack rules under a default
/// allow policy deny exactly what they name.
#[test]
fn an_imported_rule_set_enforces_real_traffic() {
    need_root!("network namespaces");
    let p = Pair::new("cs").unwrap();
    let export = temp_file(
        "cs.json",
        r#"{"listegressfirewallrulesresponse": {"count": 3, "firewallrule": [
            {"id": "r-udp", "protocol": "udp", "startport": "5000", "endport": "5010", "state": "Active", "cidrlist": "192.0.2.0/24", "destcidrlist": "192.0.2.2/32"},
            {"id": "r-icmp", "protocol": "icmp", "icmptype": 8, "icmpcode": -1, "state": "Active", "cidrlist": "192.0.2.0/24"},
            {"id": "r-tcp", "protocol": "tcp", "startport": 25, "endport": 25, "state": "Active", "cidrlist": ""},
            {"id": "r-old", "protocol": "udp", "startport": 6000, "endport": 6000, "state": "Revoke", "cidrlist": "192.0.2.0/24"}
        ]}}"#,
    );
    let out = p.egress_ok(&[
        "apply",
        "--iface",
        &p.a_if,
        "--cloudstack",
        export.to_str().unwrap(),
        "--default-policy",
        "allow",
        "--guest-cidr",
        "192.0.2.0/24",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["rules"].as_u64(), v["default"].as_str()), (Some(3), Some("allow")), "{v}");
    assert!(v["rules_file"].as_str().unwrap().starts_with("/run/egress/imported/"), "{v}");
    p.static_neighbours().unwrap();
    assert_eq!(p.udp(false, 5005, 4), 0, "udp 5000-5010 denied");
    assert_eq!(p.udp(false, 6000, 4), 4, "the revoked rule was not imported");
    assert_eq!(p.ping(false, 3), 0, "echo requests denied");
    assert!(!p.tcp(false, 25), "tcp 25 denied (the guest network's rule)");
    assert!(p.tcp(false, 80), "tcp 80 allowed by the default policy");
    let (rules, _, c) = p.counters();
    assert_eq!(c["rules"][0]["name"], "cs-r-udp", "{c}");
    assert_eq!(rules[0], 4, "{c}");
    assert_eq!(rules[1], 3, "{c}");
    assert!(rules[2] >= 1, "{c}");
    // explain reads the kept rule file: kernel and reference agree.
    let e = p.egress_ok(&[
        "explain",
        "--iface",
        &p.a_if,
        "--proto",
        "udp",
        "--src",
        "192.0.2.1",
        "--dst",
        "192.0.2.2",
        "--dport",
        "5001",
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(&e).unwrap();
    assert_eq!((e["rule"].as_str(), e["action"].as_str(), e["agree"].as_bool()), (Some("cs-r-udp"), Some("deny"), Some(true)), "{e}");
    // An invalid export changes nothing.
    let bad = temp_file("bad.json", r#"[{"id": "x", "protocol": "tcp", "startport": 9, "endport": 1, "cidrlist": "192.0.2.0/24"}]"#);
    let o = p.egress(&["apply", "--iface", &p.a_if, "--cloudstack", bad.to_str().unwrap(), "--default-policy", "deny"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(p.udp(false, 5005, 2), 0, "the imported rules stay enforced");
    assert_eq!(p.udp(false, 6000, 2), 2);
}

/// Inputs the fuzzer once crashed the importer with (fuzz/regressions/cloudstack/,
/// e.g. an id holding a DEL character, which ended the rule's comment line):
/// under every option the fuzz target tries, an accepted import parses.
#[test]
fn fuzz_regressions_import_into_valid_rule_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/cloudstack");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        for sel in 0u8..32 {
            let o = Options::from_selector(sel);
            if let Ok(i) = import("fuzz.json", &text, &o) {
                rules::parse("imported.toml", &i.toml).unwrap_or_else(|err| panic!("{}: {err}\n{}", e.path().display(), i.toml));
            }
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
    // Control characters anywhere in the text that reaches comments.
    let text = "[{\"id\": \"a\\nb\\u007f\\r\", \"protocol\": \"tcp\", \"startport\": 1, \"cidrlist\": \"10.0.0.0/8\", \"state\": \"Active\"},\n {\"id\": \"x\\ny\", \"protocol\": \"tcp\", \"state\": \"Gone\\n[[rule]]\"}]";
    let i = import("ctl\n.json", text, &policy(Action::Deny)).unwrap();
    let rs = rules::parse("imported.toml", &i.toml).unwrap_or_else(|e| panic!("{e}\n{}", i.toml));
    assert_eq!(rs.rules.len(), 1, "{}", i.toml);
}

#[test]
fn merge_ports_writes_one_rule_with_a_port_list() {
    // Two web ports and a range to one destination, another source apart.
    let text = r#"[
        {"id": "w1", "protocol": "tcp", "cidrlist": "10.1.1.0/24", "destcidrlist": "203.0.113.0/24", "startport": 80, "endport": 80},
        {"id": "w2", "protocol": "tcp", "cidrlist": "10.1.1.0/24", "destcidrlist": "203.0.113.0/24", "startport": 443},
        {"id": "o1", "protocol": "tcp", "cidrlist": "10.1.2.0/24", "destcidrlist": "203.0.113.0/24", "startport": 22},
        {"id": "w3", "protocol": "tcp", "cidrlist": "10.1.1.0/24", "destcidrlist": "203.0.113.0/24", "startport": 8000, "endport": 8100},
        {"id": "w4", "protocol": "tcp", "cidrlist": "10.1.1.0/24", "destcidrlist": "203.0.113.0/24", "startport": 8050, "endport": 8101}
    ]"#;
    let mut o = policy(Action::Deny);
    let plain = import("web.json", text, &o).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(rules::parse("i.toml", &plain.toml).unwrap().rules.len(), 5);
    o.merge_ports = true;
    let merged = import("web.json", text, &o).unwrap_or_else(|e| panic!("{e:?}"));
    let rs = rules::parse("i.toml", &merged.toml).unwrap_or_else(|e| panic!("{e}\n{}", merged.toml));
    assert_eq!(rs.rules.len(), 2, "{}", merged.toml);
    assert_eq!(rs.rules[0].name, "cs-w1");
    assert_eq!(rs.rules[0].ports, Some(vec![(80, 80), (443, 443), (8000, 8101)]));
    assert!(
        merged.toml.contains("# CloudStack rules w1, w2, w3, w4 (merged: --merge-ports): tcp ports 80,443,8000-8101"),
        "{}",
        merged.toml
    );
    assert_eq!(rs.rules[1].ports, Some(vec![(22, 22)]));
    // The same verdict for every packet (one action for all rules).
    let plain_rs = rules::parse("i.toml", &plain.toml).unwrap();
    for dport in [22u16, 79, 80, 443, 444, 7999, 8000, 8101, 8102] {
        for src in ["10.1.1.9", "10.1.2.9"] {
            let m = egress::reference::PacketMeta {
                src: src.parse().unwrap(),
                dst: "203.0.113.5".parse().unwrap(),
                proto: 6,
                l4: egress::reference::L4::Ports { dport },
            };
            assert_eq!(egress::reference::classify(&plain_rs, &m).1, egress::reference::classify(&rs, &m).1, "{src} port {dport}");
        }
    }
}
