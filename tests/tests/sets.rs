//! Port lists, named address sets from files and countries from a GeoIP
//! database, with real traffic between namespaces. Needs root; each test owns
//! its namespace pair and deletes it on exit.

use egress_tests::Pair;

fn settle(p: &Pair) {
    for v6 in [false, true] {
        p.settle(v6);
    }
}

#[test]
fn port_lists_allow_exactly_their_ports() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("plist").expect("namespaces");
    settle(&p);
    // Deny by default; one rule lets three ports and a range through, over both
    // families; a comma string works as well.
    let out = p.apply_ok(
        "default_policy = \"deny\"\n\
         [[rule]]\nname = \"nd\"\naction = \"allow\"\nprotocol = \"icmpv6\"\n\
         [[rule]]\nname = \"web\"\naction = \"allow\"\nprotocol = \"udp\"\nports = [80, 443, \"8000-8100\", 8101]\n\
         [[rule]]\nname = \"dns\"\naction = \"allow\"\nprotocol = \"udp\"\nports = \"53,5353\"\n",
    );
    assert!(out.contains("applied"), "{out}");
    for (port, want) in
        [(80, 3), (443, 3), (8000, 3), (8050, 3), (8101, 3), (53, 3), (5353, 3), (81, 0), (442, 0), (7999, 0), (8102, 0), (54, 0)]
    {
        assert_eq!(p.udp(false, port, 3), want, "udp/{port}");
    }
    assert_eq!(p.udp(true, 8100, 2), 2);
    assert_eq!(p.udp(true, 444, 2), 0);
    let (rules, _, v) = p.counters();
    // web: 5 ports x 3 + 2 (IPv6); dns: 2 x 3.
    assert_eq!(&rules[1..], &[17, 6], "{v}");
    assert_eq!(v["rules"][1]["match"], "udp any -> any dport 80,443,8000-8101", "{v}");
}

/// The test database: documentation ranges given countries in each record layout.
fn geo_db() -> Vec<u8> {
    use egress_tests::mmdb::{Layout, country_db};
    country_db(&[
        ("192.0.2.2/32", "KP", Layout::Country),
        ("192.0.2.3/32", "FR", Layout::Country),
        ("198.51.100.0/24", "IR", Layout::RegisteredCountry),
        ("203.0.113.0/25", "IR", Layout::CountryCode),
        ("203.0.113.128/25", "DE", Layout::Country),
        ("2001:db8:1::2/128", "KP", Layout::Country),
        ("2001:db8:2::/48", "FR", Layout::Country),
    ])
}

#[test]
fn countries_come_from_a_maxmind_db_in_every_record_layout() {
    let fs = egress::sets::InMemory([("geo.mmdb".to_string(), geo_db())].into_iter().collect());
    let rs = egress::rules::parse_with(
        "r.toml",
        "default_policy = \"allow\"\n[geoip]\ndatabase = \"geo.mmdb\"\n[[set]]\nname = \"sanctioned\"\ncountry = [\"KP\", \"ir\"]\n\
         [[rule]]\nname = \"no-sanctioned\"\naction = \"deny\"\ndst = \"@sanctioned\"\n",
        &fs,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let s = &rs.sets[0];
    let got: Vec<String> = s.entries.iter().enumerate().map(|(k, n)| format!("{n} {}", s.origin(k))).collect();
    assert_eq!(
        got,
        vec!["192.0.2.2/32 country KP", "198.51.100.0/24 country IR", "203.0.113.0/25 country IR", "2001:db8:1::2/128 country KP"]
    );
    assert_eq!(rs.rules[0].summary(), "all any -> @sanctioned");
    // A country the database has no network for: an empty set, not an error.
    let rs = egress::rules::parse_with(
        "r.toml",
        "default_policy = \"allow\"\n[geoip]\ndatabase = \"geo.mmdb\"\n[[set]]\nname = \"s\"\ncountry = \"JP\"\n",
        &fs,
    )
    .unwrap();
    assert!(rs.sets[0].entries.is_empty());
}

/// A second address on b, 192.0.2.3 (the neighbour of b's 192.0.2.2), resolved from a.
fn neighbour(p: &Pair) -> std::net::IpAddr {
    let st = std::process::Command::new("ip").args(["-n", &p.b, "addr", "add", "192.0.2.3/24", "dev", &p.b_if]).status().unwrap();
    assert!(st.success());
    let three: std::net::IpAddr = "192.0.2.3".parse().unwrap();
    for _ in 0..20 {
        if udp_to(p, three, 7000, 1) == 1 {
            break;
        }
    }
    three
}

fn udp_to(p: &Pair, dst: std::net::IpAddr, port: u16, n: u32) -> u32 {
    egress_tests::udp(&p.a, &p.b, dst, port, n)
}

/// A folder of its own for a rule file and the files it names.
fn dir(tag: &str) -> std::path::PathBuf {
    let d = egress_tests::temp_file(tag, "").with_extension("d");
    std::fs::create_dir_all(&d).unwrap();
    d
}

const BLOCK_RULES: &str = "default_policy = \"allow\"\n[[set]]\nname = \"blocklist\"\nfile = \"block.netset\"\n\
                           [[rule]]\nname = \"no-bad\"\naction = \"deny\"\ndst = \"@blocklist\"\n";

#[test]
fn a_set_of_100000_entries_blocks_its_entry_and_not_the_neighbour() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("bigset").expect("namespaces");
    settle(&p);
    let three = neighbour(&p);
    let d = dir("bigset");
    // FireHOL-style: a header, one address a line; both families.
    let mut set = String::from("#\n# test blocklist\n#\n");
    for i in 0..99_999u32 {
        set.push_str(&format!("2001:db8:ff:{:x}::{:x}\n", i >> 16, i & 0xffff));
    }
    set.push_str("192.0.2.2 ; the server\n");
    std::fs::write(d.join("block.netset"), &set).unwrap();
    std::fs::write(d.join("rules.toml"), BLOCK_RULES).unwrap();
    let rules = d.join("rules.toml").display().to_string();
    let check = p.egress_ok(&["check", "--rules", &rules]);
    assert!(check.contains("set @blocklist: 100000 entries, 1 IPv4 + 99999 IPv6"), "{check}");
    let started = std::time::Instant::now();
    let out = p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", &rules]);
    eprintln!("apply of 100,000 set entries: {:?}", started.elapsed());
    assert!(out.contains("@blocklist 100000 entries"), "{out}");
    assert_eq!(udp_to(&p, "192.0.2.2".parse().unwrap(), 9, 4), 0, "the listed address");
    assert_eq!(udp_to(&p, three, 9, 4), 4, "its neighbour");
    let (rules_c, _, v) = p.counters();
    assert_eq!(rules_c, vec![4], "{v}");
    assert_eq!(v["rules"][0]["match"], "all any -> @blocklist", "{v}");
    // explain names the entry and its line.
    let e = p.explain_udp(9, None);
    assert_eq!(e["agree"], true, "{e}");
    assert_eq!(e["sets"][0]["entry"], "192.0.2.2/32", "{e}");
    let origin = format!("{}:100003", d.join("block.netset").display());
    assert_eq!(e["sets"][0]["origin"], origin.as_str(), "{e}");
}

#[test]
fn a_bad_set_line_changes_nothing() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("badset").expect("namespaces");
    settle(&p);
    let d = dir("badset");
    std::fs::write(d.join("block.netset"), "192.0.2.2\n").unwrap();
    std::fs::write(d.join("rules.toml"), BLOCK_RULES).unwrap();
    let rules = d.join("rules.toml").display().to_string();
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", &rules]);
    assert_eq!(p.udp(false, 9, 2), 0);
    std::fs::write(d.join("block.netset"), "192.0.2.2\n192.0.2.0/33\n").unwrap();
    let o = p.egress(&["apply", "--iface", &p.a_if, "--rules", &rules]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}:2: set 'blocklist': '192.0.2.0/33' is not a valid CIDR", d.join("block.netset").display())), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(p.udp(false, 9, 2), 0, "the old rules stay");
    let status: serde_json::Value = serde_json::from_str(&p.egress_ok(&["status", "--json"])).unwrap();
    let me = status["interfaces"].as_array().unwrap().iter().find(|i| i["iface"] == p.a_if.as_str()).cloned().unwrap();
    assert_eq!(me["generation"], 1, "{me}");

    // A set file others can write, a directory, a device without end: refused by name.
    std::fs::write(d.join("block.netset"), "192.0.2.2\n").unwrap();
    let f = d.join("block.netset");
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let o = p.egress(&["apply", "--iface", &p.a_if, "--rules", &rules]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("writable by its group or by everyone") && err.contains("set file"), "{err}");
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    for (what, path, msg) in
        [("a directory", d.display().to_string(), "a directory, not a file"), ("/dev/zero", "/dev/zero".to_string(), "more than the")]
    {
        std::fs::write(d.join("r2.toml"), BLOCK_RULES.replace("block.netset", &path)).unwrap();
        let o = p.egress(&["check", "--rules", &d.join("r2.toml").display().to_string(), "--max-file-size", "1M"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("field 'set.file': set 'blocklist'") && err.contains(msg), "{what}: {err}");
    }
}

#[test]
fn a_set_file_changed_under_egress_run_is_enforced_with_counters_kept() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("setrun").expect("namespaces");
    settle(&p);
    let three = neighbour(&p);
    let d = dir("setrun");
    let set = d.join("block.netset");
    std::fs::write(&set, "192.0.2.2\n").unwrap();
    std::fs::write(d.join("rules.toml"), BLOCK_RULES).unwrap();
    let cfg = egress_tests::temp_file(
        "egress.toml",
        &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\n", p.a_if, d.join("rules.toml").display()),
    );
    let dmn = egress_tests::Daemon::start(&p.a, &cfg, &[]);
    let is = |v: &serde_json::Value, m: &str| v["message"].as_str().is_some_and(|s| s.contains(m)) && v["iface"] == p.a_if.as_str();
    dmn.wait_for("applied", 1, |v| is(v, "rules applied"));
    assert_eq!(udp_to(&p, "192.0.2.2".parse().unwrap(), 9, 3), 0);
    assert_eq!(udp_to(&p, three, 9, 3), 3);
    // The list gains an entry (written as a new file renamed over the old one).
    egress_tests::replace_file(&set, "192.0.2.2\n192.0.2.3\n");
    let v = dmn.wait_for("replaced", 1, |v| is(v, "rules replaced"));
    assert_eq!(v["kept"], 1, "{v}");
    assert_eq!(udp_to(&p, three, 9, 3), 0, "the new entry is enforced");
    let (c, _, v) = p.counters();
    assert_eq!(c, vec![6], "3 before the change and 3 after: {v}");
    // A bad line: logged, the rules stay.
    std::fs::write(&set, "192.0.2.2\n192.0.2.3\nnot-an-address\n").unwrap();
    let err = dmn.wait_for("invalid", 1, |v| v["level"] == "ERROR" && v["iface"] == p.a_if.as_str());
    let m = err["message"].as_str().unwrap_or_default();
    assert!(m.contains("block.netset:3: set 'blocklist'") && m.contains("the running rules stay enforced"), "{m}");
    assert_eq!(udp_to(&p, three, 9, 2), 0, "still enforced");
    assert_eq!(dmn.log().iter().filter(|v| is(v, "rules replaced")).count(), 1, "{}", dmn.dump());
}

#[test]
fn a_country_set_blocks_that_country_only() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("geo").expect("namespaces");
    settle(&p);
    let three = neighbour(&p);
    let d = dir("geo");
    std::fs::write(d.join("geo.mmdb"), geo_db()).unwrap();
    std::fs::write(
        d.join("rules.toml"),
        "default_policy = \"allow\"\n[geoip]\ndatabase = \"geo.mmdb\"\n[[set]]\nname = \"sanctioned\"\ncountry = [\"KP\", \"IR\"]\n\
         [[rule]]\nname = \"no-sanctioned\"\naction = \"deny\"\ndst = \"@sanctioned\"\n",
    )
    .unwrap();
    let rules = d.join("rules.toml").display().to_string();
    let check = p.egress_ok(&["check", "--rules", &rules]);
    assert!(check.contains("set @sanctioned: 4 entries, 3 IPv4 + 1 IPv6, from countries KP, IR"), "{check}");
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", &rules]);
    assert_eq!(p.udp(false, 9, 3), 0, "192.0.2.2 is in KP");
    assert_eq!(p.udp(true, 9, 3), 0, "2001:db8:1::2 is in KP");
    assert_eq!(udp_to(&p, three, 9, 3), 3, "192.0.2.3 is in FR");
    let e = p.egress_ok(&["explain", "--iface", &p.a_if, "--proto", "udp", "--src", "192.0.2.1", "--dst", "192.0.2.2", "--dport", "9"]);
    assert!(e.contains("dst in @sanctioned entry 192.0.2.2/32 (country KP)"), "{e}");
    // An unreadable database: a clear error, nothing changes.
    std::fs::write(d.join("geo.mmdb"), b"truncated").unwrap();
    let o = p.egress(&["apply", "--iface", &p.a_if, "--rules", &rules]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not a MaxMind DB file"), "{err}");
    std::fs::remove_file(d.join("geo.mmdb")).unwrap();
    let err = String::from_utf8_lossy(&p.egress(&["check", "--rules", &rules]).stderr).into_owned();
    assert!(err.contains("read GeoIP database") && err.contains("No such file"), "{err}");
    assert_eq!(p.udp(false, 9, 2), 0, "the old rules stay");
}

#[test]
fn lint_warns_about_empty_unused_and_covered_sets() {
    let fs = egress::sets::InMemory(
        [
            ("bl.txt".to_string(), b"192.0.2.5\n198.51.100.1\n192.0.2.6 ; partner too\n203.0.113.0/24\n".to_vec()),
            ("empty.txt".to_string(), b"# nothing yet\n".to_vec()),
            ("v6.txt".to_string(), b"2001:db8::/32\n".to_vec()),
        ]
        .into_iter()
        .collect(),
    );
    let text = "default_policy = \"allow\"\n\
                [[set]]\nname = \"bl\"\nfile = \"bl.txt\"\n\
                [[set]]\nname = \"empty\"\nfile = \"empty.txt\"\n\
                [[set]]\nname = \"unused\"\nfile = \"bl.txt\"\n\
                [[set]]\nname = \"six\"\nfile = \"v6.txt\"\n\
                [[rule]]\nname = \"partner\"\naction = \"allow\"\ndst = [\"192.0.2.0/28\", \"203.0.113.0/25\"]\n\
                [[rule]]\nname = \"no-bad\"\naction = \"deny\"\ndst = \"@bl\"\n\
                [[rule]]\nname = \"none\"\naction = \"deny\"\ndst = \"@empty\"\n\
                [[rule]]\nname = \"v4-to-six\"\naction = \"deny\"\nsrc = \"192.0.2.0/24\"\ndst = \"@six\"\n";
    let rs = egress::rules::parse_with("r.toml", text, &fs).unwrap_or_else(|e| panic!("{e}"));
    let w = egress::lint::lint(&rs, 1);
    let kinds: Vec<(usize, &str)> = w.iter().map(|w| (w.line, w.kind)).collect();
    assert_eq!(
        kinds,
        vec![(5, "empty-set"), (8, "unused-set"), (18, "set-entry-covered"), (22, "never-matches"), (26, "never-matches")],
        "{w:#?}"
    );
    let covered = &w[2].message;
    assert!(
        covered.contains("192.0.2.5/32 (@bl, bl.txt:1), 192.0.2.6/32 (@bl, bl.txt:3): earlier allow rules match every packet it would"),
        "{covered}"
    );
    assert!(!covered.contains("203.0.113.0/24"), "half of it is not covered: {covered}");
}

#[test]
fn lint_sees_a_rule_shadowed_by_the_union_of_earlier_port_lists() {
    let rs = egress::rules::parse(
        "p.toml",
        "default_policy = \"deny\"\n\
         [[rule]]\nname = \"edges\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = [80, 443]\n\
         [[rule]]\nname = \"middle\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"81-442\"\n\
         [[rule]]\nname = \"all-web\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"80-443\"\n\
         [[rule]]\nname = \"more\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"80-444,22\"\n",
    )
    .unwrap();
    let w = egress::lint::lint(&rs, 1);
    let shadowed: Vec<&str> = w.iter().filter(|w| w.kind == "shadowed").filter_map(|w| w.rule.as_deref()).collect();
    assert_eq!(shadowed, vec!["all-web"], "{w:#?}");
    assert!(w.iter().any(|w| w.message.contains("rule 'edges' (line 2), rule 'middle' (line 7) together cover it")), "{w:#?}");
}
