//! `egress explain`: the live classifier (BPF_PROG_TEST_RUN on a rule set's
//! pinned maps) agrees with the reference classifier on random rule sets and
//! packets and changes no counter; a live connection is reported as
//! established; `--rules` answers without root in the JSON contract; bad
//! fields are usage errors.

use egress::{
    explain::{self, Proto, Query},
    reference::{L4, PacketMeta},
};
use egress_tests::{B4, Pair, egress_bin, in_ns, temp_file};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value, json};

/// The explain query for a random packet, if it is one explain can ask about.
fn query(m: &PacketMeta) -> Option<Query> {
    let v6 = m.dst.is_ipv6();
    let (proto, dport, icmp) = match (m.proto, m.l4) {
        (6, L4::Ports { dport }) => (Proto::Tcp, Some(dport), None),
        (17, L4::Ports { dport }) => (Proto::Udp, Some(dport), None),
        (1, L4::Icmp { ty, code }) if !v6 => (Proto::Icmp, None, Some((ty, code))),
        (58, L4::Icmp { ty, code }) if v6 => (Proto::Icmpv6, None, Some((ty, code))),
        _ => return None,
    };
    Some(Query { proto, src: Some(m.src), dst: m.dst, sport: None, dport, icmp_type: icmp.map(|i| i.0), icmp_code: icmp.map(|i| i.1) })
}

#[test]
fn live_explain_agrees_with_the_reference_and_changes_nothing() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("expl").expect("namespaces");
    // Down: no real packet leaves a (neighbour discovery would count), so any
    // counter change would be explain's.
    let ok = std::process::Command::new("ip").args(["-n", &p.a, "link", "set", &p.a_if, "down"]).status().unwrap().success();
    assert!(ok);
    let mut asked = 0;
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(0xe1 + seed);
        let n = *[1usize, 4, 16, 40].choose(&mut rng).unwrap();
        let text = egress_tests::random::rules(&mut rng, n);
        let f = temp_file("random.toml", &text);
        p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
        let packets: Vec<(PacketMeta, Query)> =
            (0..60).map(|_| egress_tests::random::packet(&mut rng).0).filter_map(|m| Some((m, query(&m)?))).take(25).collect();
        let (ns, iface) = (p.a.clone(), p.a_if.clone());
        let before = p.egress_ok(&["counters", "--iface", &p.a_if, "--json"]);
        let results = in_ns(&ns, move || {
            let t = egress::dataplane::resolve(&iface, egress::hook::Hook::TcEgress).expect("resolve");
            packets.iter().map(|(m, q)| (*m, explain::live(&t, q).map_err(|e| e.to_string()))).collect::<Vec<_>>()
        })
        .unwrap();
        for (m, r) in results {
            let l = r.unwrap_or_else(|e| panic!("seed {seed}: explain {m:?}: {e}"));
            assert!(l.agree(), "seed {seed}: kernel {:?} vs reference {:?} on {m:?}\n{text}", l.kernel, l.reference);
            assert_ne!(l.kernel.decided_by, "established", "stateless rule sets have no connections");
            asked += 1;
        }
        let rules = |s: &str| -> Value { serde_json::from_str::<Value>(s).unwrap()["rules"].clone() };
        let after = p.egress_ok(&["counters", "--iface", &p.a_if, "--json"]);
        assert_eq!(rules(&after), rules(&before), "seed {seed}: explain changed no rule counter");
    }
    assert!(asked > 150, "{asked} packets explained");
}

#[test]
fn a_live_connection_is_explained_as_established() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("exps").expect("namespaces");
    p.settle(false);
    let open = temp_file("open.toml", "stateful = true\ndefault_policy = \"allow\"\n");
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", open.to_str().unwrap()]);
    // A UDP flow from a to b:5701, allowed and tracked.
    let srv = egress_tests::in_ns_io(&p.b, || std::net::UdpSocket::bind(("0.0.0.0", 5701))).unwrap();
    srv.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    let c = egress_tests::in_ns_io(&p.a, || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect((B4, 5701))?;
        s.send(b"x")?;
        Ok(s)
    })
    .unwrap();
    let mut b = [0u8; 4];
    srv.recv(&mut b).expect("the first datagram passes");
    let sport = c.local_addr().unwrap().port().to_string();
    let deny = temp_file("deny.toml", &format!("stateful = true\n{}", egress_tests::deny_udp(&[5701])));
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", deny.to_str().unwrap()]);
    let ask = |sport: &str| -> Value { p.explain_udp(5701, Some(sport.parse().unwrap())) };
    let v = ask(&sport);
    assert_eq!(
        (v["decided_by"].as_str(), v["action"].as_str(), v["agree"].as_bool()),
        (Some("established"), Some("allow"), Some(true)),
        "{v}"
    );
    assert_eq!(v["reference"]["rule"], "no-5701", "the rules alone would deny it: {v}");
    // Another source port is a new flow: the rule decides.
    let v = ask("1");
    assert_eq!((v["decided_by"].as_str(), v["rule"].as_str(), v["line"].as_u64()), (Some("rule"), Some("no-5701"), Some(3)), "{v}");
}

fn explain_rules(args: &[&str]) -> std::process::Output {
    let f = temp_file("demo.toml", &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo.toml")).unwrap());
    std::process::Command::new(egress_bin()).args(["explain", "--rules", f.to_str().unwrap()]).args(args).output().unwrap()
}

#[test]
fn rules_only_explain_answers_in_the_json_contract_and_refuses_bad_fields() {
    let o = explain_rules(&["--proto", "tcp", "--src", "192.0.2.1", "--dst", "203.0.113.9", "--dport", "25", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, json!({"rule": "no-smtp", "line": 5, "action": "deny", "audit": false, "decided_by": "rule"}));
    let o = explain_rules(&["--proto", "tcp", "--src", "192.0.2.1", "--dst", "203.0.113.9", "--dport", "80", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, json!({"rule": null, "line": null, "action": "allow", "audit": false, "decided_by": "default"}));
    let o = explain_rules(&["--proto", "icmpv6", "--src", "2001:db8::1", "--dst", "2001:db8::2"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("type 128 code 0") && text.contains("deny by rule 'no-ping6'"), "{text}");
    for (bad, want) in [
        (vec!["--proto", "tcp", "--src", "192.0.2.1", "--dst", "2001:db8::2", "--dport", "1"], "different address families"),
        (vec!["--proto", "udp", "--src", "192.0.2.1", "--dst", "192.0.2.2"], "--dport is required"),
        (vec!["--proto", "icmp", "--src", "2001:db8::1", "--dst", "2001:db8::2"], "does not go with IPv6"),
        (vec!["--proto", "icmp", "--src", "192.0.2.1", "--dst", "192.0.2.2", "--dport", "1"], "--sport and --dport are for"),
    ] {
        let o = explain_rules(&bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(want), "{bad:?}: {err}");
    }
}

#[test]
fn without_src_explain_chooses_the_source_and_says_which() {
    egress_tests::need_root!("network namespaces, eBPF");
    // The rule file alone: any source, when no rule names one.
    let o = explain_rules(&["--proto", "tcp", "--dst", "203.0.113.9", "--dport", "25", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["rule"].as_str(), v["src"].as_str()), (Some("no-smtp"), Some("0.0.0.0")), "{v}");
    assert!(v["src_note"].as_str().unwrap_or_default().contains("no rule names one"), "{v}");
    let by_src =
        temp_file("by-src.toml", "default_policy = \"allow\"\n[[rule]]\nname = \"lab\"\naction = \"deny\"\nsrc = \"192.0.2.0/28\"\n");
    let o = std::process::Command::new(egress_bin())
        .args(["explain", "--rules", by_src.to_str().unwrap(), "--proto", "udp", "--dst", "192.0.2.2", "--dport", "9"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the rules name sources: give the packet's source with --src"));

    // An interface: its first address of the packet's family, named in the output.
    let p = Pair::new("exsrc").expect("namespaces");
    let f = temp_file(
        "by-src.toml",
        "default_policy = \"allow\"\n[[rule]]\nname = \"lab\"\naction = \"deny\"\nprotocol = \"udp\"\nsrc = \"192.0.2.0/28\"\n",
    );
    p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    let out = p.egress_ok(&["explain", "--iface", &p.a_if, "--proto", "udp", "--dst", "192.0.2.2", "--dport", "9"]);
    assert!(out.contains(&format!("(--src not given: 192.0.2.1, the first IPv4 address of {})", p.a_if)), "{out}");
    assert!(out.contains("deny by rule 'lab'"), "{out}");
    let v: Value = serde_json::from_str(&p.egress_ok(&[
        "explain",
        "--iface",
        &p.a_if,
        "--proto",
        "udp",
        "--dst",
        "2001:db8:1::2",
        "--dport",
        "9",
        "--json",
    ]))
    .unwrap();
    assert_eq!((v["src"].as_str(), v["decided_by"].as_str()), (Some("2001:db8:1::1"), Some("default")), "{v}");
}
