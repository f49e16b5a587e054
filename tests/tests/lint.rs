//! The linter on crafted rule files (every kind of warning, exact messages) and
//! on random rule sets, where each verdict is held to the reference classifier:
//! a rule the linter calls reachable has a witness packet the reference gives
//! to that rule; a rule it calls shadowed is never given a packet by the
//! reference, among many packets drawn from inside the rule. `egress check`
//! and `apply` report the warnings; `--strict` refuses (apply needs root).

use egress::{
    lint::{self, Reach},
    reference::{self, L4, PacketMeta},
    rules::{self, Protocol, Rule},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

fn warnings(text: &str) -> Vec<(usize, Option<String>, &'static str, String)> {
    let rs = rules::parse("t.toml", text).expect("valid");
    lint::lint(&rs, lint::default_policy_line(text)).into_iter().map(|w| (w.line, w.rule, w.kind, w.message)).collect()
}

#[test]
fn crafted_rule_files_get_exactly_their_warnings() {
    let text = r#"default_policy = "deny"
[[rule]]
name = "web"
action = "allow"
dst = ["192.0.2.0/24"]
protocol = "tcp"
ports = "80-443"
[[rule]]
name = "web-host"
action = "allow"
dst = ["192.0.2.7/32"]
protocol = "tcp"
ports = "443"
[[rule]]
name = "low"
action = "allow"
dst = ["198.51.100.0/24"]
protocol = "udp"
ports = "1-100"
[[rule]]
name = "high"
action = "allow"
dst = ["198.51.100.0/24"]
protocol = "udp"
ports = "101-65535"
[[rule]]
name = "all-udp"
action = "allow"
dst = ["198.51.100.128/25"]
protocol = "udp"
ports = "53-5000"
[[rule]]
name = "web-again"
action = "allow"
protocol = "tcp"
ports = "80-443"
dst = ["192.0.2.0/24"]
[[rule]]
name = "everything"
action = "allow"
dst = ["0.0.0.0/0"]
[[rule]]
name = "no-telnet"
action = "deny"
protocol = "tcp"
ports = "23"
"#;
    let w = warnings(text);
    let kinds: Vec<(&str, &str)> = w.iter().map(|(_, r, k, _)| (r.as_deref().unwrap(), *k)).collect();
    assert_eq!(
        kinds,
        vec![
            ("web-host", "shadowed"),
            ("all-udp", "shadowed"),
            ("web-again", "duplicate"),
            ("everything", "broad-allow"),
            ("no-telnet", "redundant"),
        ],
        "{w:#?}"
    );
    assert_eq!(w[0].0, 8);
    assert_eq!(w[0].3, "rule 'web-host' (line 8) can never match: rule 'web' (line 2) covers it");
    assert_eq!(
        w[1].3, "rule 'all-udp' (line 26) can never match: rule 'low' (line 14), rule 'high' (line 20) together cover it",
        "coverage by the union of two earlier rules"
    );
    assert_eq!(w[2].3, "rule 'web-again' (line 32) can never match: it repeats the match of rule 'web' (line 2)");
    assert!(w[4].3.contains("only repeats the default policy (deny)"), "{}", w[4].3);
    // A deny rule that shields a later allow is meaningful; an empty deny file warns.
    assert!(warnings("default_policy = \"deny\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\ndst = [\"192.0.2.7/32\"]\n[[rule]]\nname = \"b\"\naction = \"allow\"\ndst = [\"192.0.2.0/24\"]\n").is_empty());
    let w = warnings("# nothing\ndefault_policy = \"deny\"\n");
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].0, w[0].1.clone(), w[0].2), (2, None, "empty-deny"));
    // Partial overlap is not coverage: a port range that sticks out.
    assert!(warnings("default_policy = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"1-100\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"50-150\"\n").is_empty());
}

/// A random packet inside rule `r` (`v6`: the family to draw from).
fn inside(rng: &mut StdRng, r: &Rule, v6: bool) -> Option<PacketMeta> {
    let addr = |rng: &mut StdRng, nets: &Option<Vec<ipnet::IpNet>>| -> Option<std::net::IpAddr> {
        let fam: Vec<ipnet::IpNet> = match nets {
            None => vec![if v6 { "::/0".parse().unwrap() } else { "0.0.0.0/0".parse().unwrap() }],
            Some(v) => v.iter().copied().filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6).collect(),
        };
        let n = *fam.choose(rng)?;
        Some(match n {
            ipnet::IpNet::V4(n) => {
                let host = if n.prefix_len() == 32 { 0 } else { rng.gen_range(0..=u32::MAX >> n.prefix_len()) };
                std::net::Ipv4Addr::from(u32::from(n.network()) | host).into()
            }
            ipnet::IpNet::V6(n) => {
                let host = if n.prefix_len() == 128 { 0 } else { rng.gen_range(0..=u128::MAX >> n.prefix_len()) };
                std::net::Ipv6Addr::from(u128::from(n.network()) | host).into()
            }
        })
    };
    let (src, dst) = (addr(rng, &r.src)?, addr(rng, &r.dst)?);
    let icmp = if v6 { 58 } else { 1 };
    let proto = match r.protocol {
        Protocol::All => *[6u8, 17, icmp, 47].choose(rng).unwrap(),
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Icmp | Protocol::Icmpv6 => icmp,
    };
    let (lo, hi) = *r.l4_ranges().choose(rng).unwrap();
    let v = rng.gen_range(lo..=hi);
    let l4 = match proto {
        _ if r.l4_any() && rng.gen_bool(0.1) => L4::None,
        6 | 17 => L4::Ports { dport: v },
        1 | 58 => L4::Icmp { ty: (v >> 8) as u8, code: v as u8 },
        _ => L4::None,
    };
    Some(PacketMeta { src, dst, proto, l4 })
}

#[test]
fn lint_agrees_with_the_reference_on_random_rule_sets() {
    let sets: u64 = std::env::var("EGRESS_LINT_SETS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let (mut witnessed, mut shadowed) = (0, 0);
    for seed in 0..sets {
        let mut rng = StdRng::seed_from_u64(0x11a7 + seed);
        let n = *[2usize, 4, 8, 16, 30].choose(&mut rng).unwrap();
        let (text, files) = if seed % 3 == 2 {
            egress_tests::random::rules_with_sets(&mut rng, n)
        } else {
            (egress_tests::random::rules(&mut rng, n), Default::default())
        };
        let rs = rules::parse_with("random.toml", &text, &files).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        for (i, reach) in lint::reach(&rs).into_iter().enumerate() {
            let r = &rs.rules[i];
            match reach {
                Reach::Witness(p) => {
                    let (slot, _) = reference::classify(&rs, &p);
                    assert_eq!(slot, r.index, "seed {seed}: the witness {p:?} of rule {} goes elsewhere\n{text}", r.name);
                    witnessed += 1;
                }
                Reach::Shadowed(by) => {
                    assert!(by.iter().all(|&j| j < i), "seed {seed}");
                    // A rule its sets leave without a family matches no packet at all.
                    let rounds = if r.families.v4 || r.families.v6 { 300 } else { 0 };
                    for _ in 0..rounds {
                        let v6 = if r.families.v4 && r.families.v6 { rng.gen_bool(0.5) } else { r.families.v6 };
                        let Some(p) = inside(&mut rng, r, v6) else { continue };
                        assert!(reference::matches(r, &p), "seed {seed}: the sampler left rule {}: {p:?}", r.name);
                        let (slot, _) = reference::classify(&rs, &p);
                        assert_ne!(slot, r.index, "seed {seed}: rule {} called shadowed, but {p:?} reaches it\n{text}", r.name);
                    }
                    shadowed += 1;
                }
                Reach::Unknown => panic!("seed {seed}: undecided for rule {}\n{text}", r.name),
            }
        }
    }
    assert!(witnessed > 1000 && shadowed > 100, "the random sets exercise both answers: {witnessed} witnessed, {shadowed} shadowed");
    eprintln!("lint: {witnessed} reachable rules witnessed, {shadowed} shadowed rules sampled");
}

const SHADOWED: &str = "default_policy = \"allow\"\n[[rule]]\nname = \"udp\"\naction = \"deny\"\nprotocol = \"udp\"\n[[rule]]\nname = \"dns\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"53\"\n";

#[test]
fn check_reports_warnings_and_strict_makes_them_errors() {
    let f = egress_tests::temp_file("shadowed.toml", SHADOWED);
    let check = |args: &[&str]| {
        std::process::Command::new(egress_tests::egress_bin()).arg("check").arg("--rules").arg(&f).args(args).output().unwrap()
    };
    let want = "rule 'dns' (line 6) can never match: rule 'udp' (line 2) covers it";
    let o = check(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "warnings alone do not fail: {err}");
    assert!(err.contains(&format!("warning: {}:6: {want}", f.display())), "{err}");
    let o = check(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(v["warnings"], serde_json::json!([{"line": 6, "rule": "dns", "kind": "shadowed", "message": want}]), "{v}");
    let o = check(&["--strict"]);
    assert_eq!(o.status.code(), Some(2), "--strict: exit 2");
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 lint warning(s) and --strict"));
}

#[test]
fn apply_strict_refuses_and_changes_nothing() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = egress_tests::Pair::new("lint").expect("namespaces");
    p.settle(false);
    let good = egress_tests::temp_file("good.toml", &egress_tests::deny_udp(&[5901]));
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", good.to_str().unwrap(), "--strict"]);
    let bad = egress_tests::temp_file("shadowed.toml", SHADOWED);
    let o = p.egress(&["apply", "--iface", &p.a_if, "--rules", bad.to_str().unwrap(), "--strict"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!((p.udp(false, 5901, 2), p.udp(false, 5902, 2)), (0, 2), "the previous rules stay");
    // Without --strict the same file is applied, the warning printed (and in --json).
    let o = p.egress(&["apply", "--iface", &p.a_if, "--rules", bad.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["warnings"][0]["kind"], "shadowed", "{v}");
    assert_eq!(p.udp(false, 5902, 2), 0, "applied");
}

/// A rule entangled with more rules than the exact check may look at within
/// its share of the file's work bound is not checked, and the file says so once
/// (kind "unchecked"); a rule that 200 others cover together in a small
/// file is still found; thousands of copies of one match are duplicates and stay
/// cheap.
#[test]
fn entangled_rules_are_said_unchecked_and_duplicates_stay_cheap() {
    let mut text = String::from("default_policy = \"allow\"\n");
    for p in 1..=200 {
        text.push_str(&format!("[[rule]]\nname = \"p{p}\"\naction = \"deny\"\ndst = \"192.0.2.0/24\"\nprotocol = \"tcp\"\nports = {p}\n"));
    }
    text.push_str("[[rule]]\nname = \"all\"\naction = \"deny\"\ndst = \"192.0.2.0/24\"\nprotocol = \"tcp\"\nports = \"1-200\"\n");
    let w = warnings(&text);
    assert!(!w.iter().any(|w| w.2 == "unchecked"), "{w:?}");
    assert!(w.iter().any(|w| w.1.as_deref() == Some("all") && w.2 == "shadowed"), "checked exactly: {w:?}");
    // 30,000 rules from distinct sources to one destination, all ports: every
    // rule shares its destination and ports with all the others, more than its
    // share of the work bound lets it look at.
    let mut text = String::from("default_policy = \"allow\"\n");
    for i in 0..30_000 {
        text.push_str(&format!(
            "[[rule]]\naction = \"deny\"\nsrc = \"10.{}.{}.{}\"\ndst = \"192.0.2.0/24\"\nprotocol = \"tcp\"\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let t = std::time::Instant::now();
    let w = warnings(&text);
    eprintln!("30,000 entangled rules linted in {:?}", t.elapsed());
    let unchecked: Vec<_> = w.iter().filter(|w| w.2 == "unchecked").collect();
    assert_eq!(unchecked.len(), 1, "{unchecked:?}");
    assert_eq!((unchecked[0].0, unchecked[0].1.as_deref()), (1, None));
    assert!(
        unchecked[0].3.starts_with("30000 rule(s) not checked for shadowing or redundancy: each shares its destination and ports"),
        "{}",
        unchecked[0].3
    );
    assert!(unchecked[0].3.contains("(5000 steps a rule in a file of 30000 rules)"), "{}", unchecked[0].3);
    // 3,000 copies of one rule: 2,999 duplicates, found without comparing them all.
    let mut text = String::from("default_policy = \"deny\"\n");
    for k in 0..3000 {
        text.push_str(&format!(
            "[[rule]]\nname = \"c{k}\"\naction = \"allow\"\ndst = \"10.0.0.0/8\"\nprotocol = \"tcp\"\nports = \"1000-2000\"\n"
        ));
    }
    let w = warnings(&text);
    assert_eq!(w.iter().filter(|w| w.2 == "duplicate").count(), 2999);
}

/// A later rule by name of the other action shields a rule that repeats the
/// default policy (it may match any address it learns); an earlier one does not.
#[test]
fn a_later_rule_by_name_shields_a_rule_repeating_the_default() {
    let head = "default_policy = \"allow\"\n[dns]\nresolvers = [\"192.0.2.53\"]\n";
    let web = "[[rule]]\nname = \"web\"\naction = \"allow\"\nprotocol = \"tcp\"\ndst = \"198.51.100.0/24\"\nports = \"443\"\n";
    let by_name = "[[rule]]\nname = \"no-bad\"\naction = \"deny\"\ndst_fqdn = \"bad.example\"\n";
    let redundant = |text: &str| warnings(text).iter().any(|w| w.1.as_deref() == Some("web") && w.2 == "redundant");
    assert!(!redundant(&format!("{head}{web}{by_name}")), "shielded by the later rule by name");
    assert!(redundant(&format!("{head}{by_name}{web}")), "an earlier rule by name shields nothing");
    let allow_by_name = by_name.replace("\"deny\"", "\"allow\"");
    assert!(redundant(&format!("{head}{web}{allow_by_name}")), "a later rule by name of the same action shields nothing");
}
