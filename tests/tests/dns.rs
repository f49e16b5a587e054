//! Rules by domain name (`dst_fqdn`) with real components: dnsmasq answers in
//! namespace b, the libc resolver and TCP connects in namespace a, where egress
//! filters. Needs root; each test owns its namespaces and deletes them on exit.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use egress_tests::{
    Pair,
    dns::{
        DnsServer, NOT_RESOLVER, RESOLVER, Record, SILENT_RESOLVER, answer, connect_ms, open, query, resolve, send_from_53, send_query,
        still_open,
    },
};

const PORT: u16 = 8080;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Default deny; DNS to the resolver allowed; `rules` after.
fn rules(extra: &str) -> String {
    format!(
        "default_policy = \"deny\"\n[dns]\nresolvers = [\"{RESOLVER}\", \"{SILENT_RESOLVER}\"]\nmin_ttl = 1\n\
         [[rule]]\nname = \"dns\"\naction = \"allow\"\nprotocol = \"udp\"\ndst = [\"{RESOLVER}\", \"{SILENT_RESOLVER}\"]\nports = \"53\"\n{extra}"
    )
}

const WEB: &str = "[[rule]]\nname = \"web\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"8080\"\ndst_fqdn = [\"*.fresh.example\", \"exact.example\", \"*.cdn.example\"]\n";

fn counters(p: &Pair) -> serde_json::Value {
    serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"])).expect("counters json")
}

fn learned(p: &Pair) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&p.egress_ok(&["dns", "--iface", &p.a_if, "--json"])).expect("dns json");
    v.as_array().cloned().unwrap_or_default()
}

fn connects(p: &Pair, dst: IpAddr) -> bool {
    connect_ms(&p.a, dst, PORT, Duration::from_millis(1500)).is_some()
}

#[test]
fn first_connection_after_a_lookup_succeeds_on_its_first_syn() {
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let p = Pair::new("fqdn1").expect("namespaces");
    let names: Vec<String> = (0..100).map(|i| format!("n{i}.fresh.example")).collect();
    let mut records: Vec<Record<'_>> = names.iter().enumerate().map(|(i, n)| Record::A(n, v4(198, 51, 100, 10 + i as u8), 300)).collect();
    records.push(Record::A("other.example", v4(203, 0, 113, 7), 300));
    let _dns = DnsServer::start(&p, &records, &[PORT]).expect("dnsmasq");
    p.apply_ok(&rules(WEB));
    // An allowed name's address before any lookup: blocked.
    assert!(!connects(&p, v4(198, 51, 100, 10)), "connected before the lookup");
    for (i, n) in names.iter().enumerate() {
        let addr = v4(198, 51, 100, 10 + i as u8);
        assert_eq!(resolve(&p.a, n), vec![addr], "{n}");
        // The first SYN gets through: a retransmission would take a second.
        let ms = connect_ms(&p.a, addr, PORT, Duration::from_millis(900)).unwrap_or_else(|| panic!("{n}: no connection within 900 ms"));
        assert!(ms < 900, "{n}: {ms} ms");
    }
    // A name no rule allows resolves (DNS is allowed) but stays blocked.
    assert_eq!(resolve(&p.a, "other.example"), vec![v4(203, 0, 113, 7)]);
    assert!(!connects(&p, v4(203, 0, 113, 7)));
    let v = counters(&p);
    assert_eq!(v["rules"][1]["name"], "web");
    assert!(v["rules"][1]["packets"].as_u64().unwrap_or(0) >= 100, "{v}");
    assert_eq!(v["dns"]["answers_learned_from"], 100, "{v}");
    assert_eq!(v["dns"]["addresses_now"], 100, "{v}");
    let l = learned(&p);
    let one = l.iter().find(|e| e["name"] == "n7.fresh.example").expect("n7 learned");
    assert_eq!(one["address"], "198.51.100.17");
    assert_eq!(one["pattern"], "*.fresh.example");
    assert_eq!(one["rule"], "web");
    assert!(one["expires_in"].as_u64().is_some_and(|s| s > 200 && s <= 300), "{one}");
}

#[test]
fn answers_over_tcp_teach_too() {
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let p = Pair::new("fqdntcp").expect("namespaces");
    let records = [Record::A("t.fresh.example", v4(198, 51, 100, 70), 300), Record::A("bad.example", v4(198, 51, 100, 71), 300)];
    let dns = DnsServer::start(&p, &records, &[PORT]).expect("dnsmasq");
    dns.use_tcp().expect("resolv.conf");
    let deny = "[[rule]]\nname = \"no-bad\"\naction = \"deny\"\ndst_fqdn = \"bad.example\"\n";
    let tcp_dns = "[[rule]]\nname = \"dns-tcp\"\naction = \"allow\"\nprotocol = \"tcp\"\ndst = \"192.0.2.2\"\nports = \"53\"\n";
    p.apply_ok(&rules(&format!("{tcp_dns}{deny}{WEB}")));
    assert!(!connects(&p, v4(198, 51, 100, 70)));
    assert_eq!(resolve(&p.a, "t.fresh.example"), vec![v4(198, 51, 100, 70)]);
    let ms = connect_ms(&p.a, v4(198, 51, 100, 70), PORT, Duration::from_millis(900)).expect("first connection after a lookup over TCP");
    assert!(ms < 900);
    // A query over TCP for a denied name gets no answer.
    assert!(resolve(&p.a, "bad.example").is_empty());
    let v = counters(&p);
    assert_eq!(v["dns"]["answers_learned_from"], 1, "{v}");
    assert!(v["dns"]["queries_denied"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(v["dns"]["ignored_malformed"], 0, "{v}");
    assert_eq!(v["dns"]["ignored_not_from_resolver"], 0, "{v}");
}

#[test]
fn spoofed_answers_teach_nothing() {
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let p = Pair::new("fqdn2").expect("namespaces");
    // (spare.example only gives b the address the spoofed answers name.)
    let records = [Record::A("real.fresh.example", v4(198, 51, 100, 5), 300), Record::A("spare.example", v4(198, 51, 100, 66), 300)];
    let _dns = DnsServer::start(&p, &records, &[PORT]).expect("dnsmasq");
    p.apply_ok(&rules(WEB));
    let target = Ipv4Addr::new(198, 51, 100, 66);
    let client = |port: u16| SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), port));
    // 1. From an address that is not a listed resolver.
    send_from_53(&p.b, NOT_RESOLVER, client(40000), answer(1, "evil.fresh.example", &[target], 300)).expect("send");
    // 2. From the resolver, to no query.
    send_from_53(&p.b, SILENT_RESOLVER, client(40001), answer(2, "evil.fresh.example", &[target], 300)).expect("send");
    // 3. To a real query (to the listed resolver where nothing listens), with
    // the wrong transaction id; then, as the control, with the right one.
    let q = send_query(&p.a, SILENT_RESOLVER, query(0x1234, "good.fresh.example", 1)).expect("query");
    let port = q.local_addr().expect("port").port();
    send_from_53(&p.b, SILENT_RESOLVER, client(port), answer(0x1235, "good.fresh.example", &[target], 300)).expect("send");
    std::thread::sleep(Duration::from_millis(200));
    assert!(learned(&p).is_empty(), "{:?}", learned(&p));
    assert!(!connects(&p, IpAddr::V4(target)));
    let v = counters(&p);
    assert_eq!(v["dns"]["ignored_not_from_resolver"], 1, "{v}");
    assert_eq!(v["dns"]["ignored_no_matching_query"], 2, "{v}");
    // The right id teaches (once: the query is answered now).
    send_from_53(&p.b, SILENT_RESOLVER, client(port), answer(0x1234, "good.fresh.example", &[target], 300)).expect("send");
    send_from_53(&p.b, SILENT_RESOLVER, client(port), answer(0x1234, "good.fresh.example", &[Ipv4Addr::new(198, 51, 100, 67)], 300))
        .expect("send");
    std::thread::sleep(Duration::from_millis(200));
    let l = learned(&p);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["address"], "198.51.100.66");
    assert!(connects(&p, IpAddr::V4(target)));
    assert_eq!(counters(&p)["dns"]["ignored_no_matching_query"], 3);
}

#[test]
fn wildcards_cnames_and_query_filtering() {
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let p = Pair::new("fqdn3").expect("namespaces");
    let records = [
        Record::A("cdn.example", v4(198, 51, 100, 20), 300),
        Record::A("a.cdn.example", v4(198, 51, 100, 21), 300),
        Record::A("target.elsewhere.example", v4(198, 51, 100, 22), 300),
        Record::Cname("alias.cdn.example", "target.elsewhere.example"),
        Record::A("exact.example", v4(198, 51, 100, 23), 300),
        Record::A("x.exact.example", v4(198, 51, 100, 24), 300),
        Record::A("bad.example", v4(198, 51, 100, 30), 300),
        Record::A("www.bad.example", v4(198, 51, 100, 31), 300),
    ];
    let _dns = DnsServer::start(&p, &records, &[PORT]).expect("dnsmasq");
    let deny = "[[rule]]\nname = \"no-malware\"\naction = \"deny\"\ndst_fqdn = [\"*.bad.example\", \"bad.example\"]\n";
    p.apply_ok(&rules(&format!("{deny}{WEB}")));
    // *.cdn.example: below the suffix, not the suffix itself.
    for (name, addr, ok) in [
        ("a.cdn.example", v4(198, 51, 100, 21), true),
        ("cdn.example", v4(198, 51, 100, 20), false),
        // A CNAME chain: the final address is learned for the question's pattern.
        ("alias.cdn.example", v4(198, 51, 100, 22), true),
        // An exact name, not the names below it.
        ("exact.example", v4(198, 51, 100, 23), true),
        ("x.exact.example", v4(198, 51, 100, 24), false),
    ] {
        assert_eq!(resolve(&p.a, name), vec![addr], "{name}");
        assert_eq!(connects(&p, addr), ok, "{name}");
    }
    // A denied query: no answer reaches the client.
    for name in ["bad.example", "www.bad.example"] {
        assert!(resolve(&p.a, name).is_empty(), "{name} resolved");
    }
    let v = counters(&p);
    assert_eq!(v["rules"][1]["name"], "no-malware");
    assert!(v["rules"][1]["packets"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert!(v["dns"]["queries_denied"].as_u64().unwrap_or(0) >= 2, "{v}");
    // The deny event carries the question name (every event sent so far is read).
    let sent = v["events"]["sent"].as_u64().expect("events sent").to_string();
    let ev = p.egress_ok(&["events", "--iface", &p.a_if, "--json", "--count", &sent]);
    let names: Vec<String> = ev
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["rule"] == "no-malware")
        .filter_map(|e| e["qname"].as_str().map(str::to_string))
        .collect();
    assert!(names.iter().any(|n| n == "bad.example") || names.iter().any(|n| n == "www.bad.example"), "{ev}");
    // explain names the learned name of a verdict.
    let e: serde_json::Value = serde_json::from_str(&p.egress_ok(&[
        "explain",
        "--iface",
        &p.a_if,
        "--proto",
        "tcp",
        "--src",
        "192.0.2.1",
        "--dst",
        "198.51.100.22",
        "--dport",
        "8080",
        "--json",
    ]))
    .expect("explain json");
    assert_eq!(e["rule"], "web", "{e}");
    assert_eq!(e["agree"], true, "{e}");
    assert_eq!(e["names"][0]["name"], "alias.cdn.example", "{e}");
    assert_eq!(e["names"][0]["pattern"], "*.cdn.example", "{e}");
}

#[test]
fn learned_addresses_expire_stateless_and_stateful() {
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let p = Pair::new("fqdn4").expect("namespaces");
    let records = [Record::A("short.fresh.example", v4(198, 51, 100, 40), 2), Record::A("kept.fresh.example", v4(198, 51, 100, 41), 2)];
    let _dns = DnsServer::start(&p, &records, &[PORT]).expect("dnsmasq");
    // Stateless: allowed while learned (the verdict is not cached), blocked
    // within a second of expiry.
    p.apply_ok(&rules(WEB));
    assert_eq!(resolve(&p.a, "short.fresh.example").len(), 1);
    assert!(connects(&p, v4(198, 51, 100, 40)));
    std::thread::sleep(Duration::from_millis(3200));
    assert!(!connects(&p, v4(198, 51, 100, 40)), "still allowed after expiry");
    // Stateful: an established connection outlives its address; a new one does not.
    p.apply_ok(&rules(WEB).replace("default_policy = \"deny\"\n", "default_policy = \"deny\"\nstateful = true\n"));
    assert_eq!(resolve(&p.a, "kept.fresh.example").len(), 1);
    let mut s = open(&p.a, v4(198, 51, 100, 41), PORT).expect("connection");
    std::thread::sleep(Duration::from_millis(3200));
    assert!(still_open(&mut s), "the established connection was cut at expiry");
    assert!(!connects(&p, v4(198, 51, 100, 41)), "a new connection after expiry");
}

#[test]
fn a_reload_keeps_what_its_patterns_learned_and_drops_the_rest() {
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let p = Pair::new("fqdn5").expect("namespaces");
    let records = [Record::A("a.fresh.example", v4(198, 51, 100, 50), 300), Record::A("exact.example", v4(198, 51, 100, 51), 300)];
    let _dns = DnsServer::start(&p, &records, &[PORT]).expect("dnsmasq");
    p.apply_ok(&rules(WEB));
    resolve(&p.a, "a.fresh.example");
    resolve(&p.a, "exact.example");
    assert_eq!(learned(&p).len(), 2);
    // The same patterns (a changed rule elsewhere): both stay, no new lookup needed.
    p.apply_ok(&rules(&format!("{WEB}[[rule]]\nname = \"ping\"\naction = \"allow\"\nprotocol = \"icmp\"\n")));
    assert_eq!(learned(&p).len(), 2);
    assert!(connects(&p, v4(198, 51, 100, 50)) && connects(&p, v4(198, 51, 100, 51)));
    // exact.example's rule goes: what it taught goes, the rest stays.
    p.apply_ok(&rules(&WEB.replace(", \"exact.example\"", "")));
    let l = learned(&p);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["name"], "a.fresh.example");
    assert!(connects(&p, v4(198, 51, 100, 50)));
    assert!(!connects(&p, v4(198, 51, 100, 51)));
}

#[test]
fn bad_names_are_errors_with_file_line_rule_and_field() {
    for (bad, why) in [
        ("a..example", "empty label"),
        ("*.*.example", "'*' is allowed only"),
        ("a.*.example", "'*' is allowed only"),
        ("b\u{e9}.example", "A-label"),
        ("under score!.example", "not a character"),
    ] {
        let text = rules(&format!("[[rule]]\nname = \"x\"\nprotocol = \"tcp\"\ndst_fqdn = [\"ok.example\", \"{bad}\"]\n"));
        let e = egress::rules::parse("r.toml", &text).expect_err(bad).to_string();
        assert!(e.contains("r.toml:14: rule 'x', field 'dst_fqdn': entry 2"), "{bad}: {e}");
        assert!(e.contains(why), "{bad}: {e}");
    }
    let long = format!("{}.example", "a".repeat(64));
    let e = egress::rules::parse("r.toml", &rules(&format!("[[rule]]\ndst_fqdn = \"{long}\"\n"))).expect_err("long").to_string();
    assert!(e.contains("more than DNS's 63"), "{e}");
    let both = rules("[[rule]]\nname = \"both\"\ndst = \"198.51.100.0/24\"\ndst_fqdn = \"a.example\"\n");
    assert!(egress::rules::parse("r.toml", &both).expect_err("both").to_string().contains("either by address (dst) or by name (dst_fqdn)"));
    let no_dns = "default_policy = \"deny\"\n[[rule]]\nname = \"web\"\ndst_fqdn = \"a.example\"\n";
    let e = egress::rules::parse("r.toml", no_dns).expect_err("no resolvers").to_string();
    assert!(e.contains("r.toml:2: rule 'web', field 'dst_fqdn'") && e.contains("[dns] resolvers"), "{e}");
}

#[test]
fn a_router_learns_from_answers_leaving_toward_its_guests() {
    use egress_tests::router::Router;
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let r = Router::new("fqdnr").expect("namespaces");
    let out = Ipv4Addr::new(203, 0, 113, 2);
    let records = [Record::A("api.out.example", v4(203, 0, 113, 50), 300), Record::A("other.example", v4(203, 0, 113, 51), 300)];
    let _dns = DnsServer::serve(&r.outside, "ow0", out, &[], &r.guest, &records, &[PORT]).expect("dnsmasq");
    // On the guest-facing interface's ingress: queries arrive from the guests,
    // answers leave toward them (seen by the companion on its egress).
    let rules = format!(
        "default_policy = \"deny\"\n[dns]\nresolvers = [\"{out}\"]\n\
         [[rule]]\nname = \"dns\"\naction = \"allow\"\nprotocol = \"udp\"\ndst = \"{out}\"\nports = \"53\"\n\
         [[rule]]\nname = \"api\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"{PORT}\"\ndst_fqdn = \"*.out.example\"\n"
    );
    let f = egress_tests::temp_file("rules.toml", &rules);
    r.egress_ok(&["apply", "--iface", &r.rg, "--hook", "tc-ingress", "--rules", &f.to_string_lossy()]);
    let guest_connects = |a: IpAddr| connect_ms(&r.guest, a, PORT, Duration::from_millis(1500)).is_some();
    assert!(!guest_connects(v4(203, 0, 113, 50)), "before the lookup");
    assert_eq!(resolve(&r.guest, "api.out.example"), vec![v4(203, 0, 113, 50)]);
    let ms = connect_ms(&r.guest, v4(203, 0, 113, 50), PORT, Duration::from_millis(900)).expect("first connection after the lookup");
    assert!(ms < 900);
    assert_eq!(resolve(&r.guest, "other.example"), vec![v4(203, 0, 113, 51)]);
    assert!(!guest_connects(v4(203, 0, 113, 51)));
    let v = r.counters(&r.rg, "tc-ingress");
    assert_eq!(v["dns"]["answers_learned_from"], 1, "{v}");
    let l: serde_json::Value =
        serde_json::from_str(&r.egress_ok(&["dns", "--iface", &r.rg, "--hook", "tc-ingress", "--json"])).expect("dns json");
    assert_eq!(l[0]["name"], "api.out.example", "{l}");
    assert_eq!(l[0]["address"], "203.0.113.50", "{l}");
}

/// The metrics page served in namespace `ns` on 127.0.0.1:`port`.
fn metrics(ns: &str, port: u16) -> String {
    use std::io::{Read as _, Write as _};
    egress_tests::in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .unwrap_or_default()
}

#[test]
fn egress_run_keeps_learned_names_across_its_restart_and_follows_reloads() {
    egress_tests::need_root!("network namespaces, eBPF, dnsmasq");
    let p = Pair::new("fqdnrun").expect("namespaces");
    let records = [Record::A("a.fresh.example", v4(198, 51, 100, 60), 300), Record::A("exact.example", v4(198, 51, 100, 61), 300)];
    let _dns = DnsServer::start(&p, &records, &[PORT]).expect("dnsmasq");
    let rules_file = egress_tests::temp_file("rules.toml", &rules(WEB));
    let cfg =
        egress_tests::temp_file("egress.toml", &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\n", p.a_if, rules_file.display()));
    let is = |v: &serde_json::Value, m: &str| v["message"].as_str().is_some_and(|s| s.contains(m)) && v["iface"] == p.a_if.as_str();
    let mut dmn = egress_tests::Daemon::start(&p.a, &cfg, &[]);
    dmn.wait_for("applied", 1, |v| is(v, "rules applied"));
    resolve(&p.a, "a.fresh.example");
    resolve(&p.a, "exact.example");
    assert!(connects(&p, v4(198, 51, 100, 60)));
    // A restart of the service: what was learned is still enforced, no new lookup.
    dmn.signal(libc::SIGTERM);
    dmn.wait_exit();
    let dmn = egress_tests::Daemon::start(&p.a, &cfg, &["--metrics", "9464"]);
    dmn.wait_for("up again", 1, |v| is(v, "rules"));
    assert_eq!(learned(&p).len(), 2);
    let body = metrics(&p.a, 9464);
    let labels = format!("{{iface=\"{}\",hook=\"tc-egress\"}}", p.a_if);
    for want in [format!("egress_dns_addresses{labels} 2.0"), format!("egress_dns_answers_total{labels} 2")] {
        assert!(body.lines().any(|l| l == want), "{want} in\n{body}");
    }
    assert!(body.contains("egress_dns_answers_ignored_total{") && body.contains("reason=\"no_matching_query\""), "{body}");
    assert!(connects(&p, v4(198, 51, 100, 60)) && connects(&p, v4(198, 51, 100, 61)));
    // A reload that removes exact.example: its address goes, the other stays.
    egress_tests::replace_file(&rules_file, &rules(&WEB.replace(", \"exact.example\"", "")));
    dmn.wait_for("replaced", 1, |v| is(v, "rules replaced"));
    assert!(connects(&p, v4(198, 51, 100, 60)));
    assert!(!connects(&p, v4(198, 51, 100, 61)));
    assert_eq!(learned(&p).len(), 1);
}
