//! `egress run --metrics`: scraped over TCP during real traffic, with exact
//! per-rule counts, reload and failure counters and the generation; many
//! connections and garbage requests do not stop it serving or enforcing; a port
//! already in use is an error at start; a bare port listens on 127.0.0.1 only.
//! Needs root.

use std::{io::Write as _, net::TcpStream};

use egress_tests::{Daemon, Pair, deny_udp, http_get as get, in_ns, replace_file, temp_file};

/// A port for this test process (tests of one binary run in parallel).
fn port(offset: u16) -> u16 {
    20_000 + (std::process::id() % 20_000) as u16 + offset
}

fn config(iface: &str, rules: &std::path::Path) -> std::path::PathBuf {
    temp_file("egress.toml", &format!("[[interface]]\nname = \"{iface}\"\nrules = \"{}\"\n", rules.display()))
}

/// The value of the series whose line starts with `series` (name and labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn scraped_during_real_traffic_with_exact_values() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("met").expect("namespaces");
    p.static_neighbours().unwrap();
    let rules = temp_file("rules.toml", &deny_udp(&[6401]));
    let port = port(0);
    let d = Daemon::start(&p.a, &config(&p.a_if, &rules), &["--metrics", &port.to_string()]);
    d.wait_msg("rules applied", 1);
    assert_eq!(p.udp(false, 6401, 3), 0);
    let (status, body) = get(&p.a, port, "/metrics");
    assert!(status.contains("200"), "{status}");
    let l = |name: &str, extra: &str| format!("{name}{{iface=\"{}\",hook=\"tc-egress\"{extra}}}", p.a_if);
    assert_eq!(value(&body, &l("egress_rule_packets_total", ",rule=\"no-6401\",action=\"deny\"")), Some(3.0), "{body}");
    assert_eq!(value(&body, &l("egress_rule_bytes_total", ",rule=\"no-6401\",action=\"deny\"")), Some(3.0 * 46.0), "{body}");
    assert_eq!(value(&body, &l("egress_reloads_total", "")), Some(1.0), "{body}");
    assert_eq!(value(&body, &l("egress_reload_failures_total", "")), Some(0.0), "{body}");
    assert_eq!(value(&body, &l("egress_ruleset_generation", "")), Some(1.0), "{body}");
    assert!(value(&body, &l("egress_last_reload_timestamp_seconds", "")).is_some_and(|t| t > 1.7e9), "{body}");
    assert!(body.contains("# TYPE egress_rule_packets counter") && body.trim_end().ends_with("# EOF"), "{body}");
    // The service logs the deny events (rate-limited: the default burst covers these 3).
    let e = d.wait_for("denied", 3, |v| v["message"] == "denied" && v["rule"] == "no-6401");
    assert_eq!((e["dport"].as_u64(), e["protocol"].as_str(), e["src"].as_str()), (Some(6401), Some("udp"), Some("192.0.2.1")), "{e}");
    let (_, body) = get(&p.a, port, "/metrics");
    assert_eq!(value(&body, &l("egress_deny_events_total", ",outcome=\"sent\"")), Some(3.0), "{body}");

    // A replacement: counters carried, generation and reloads move on; a bad file counts as a failure.
    replace_file(&rules, &deny_udp(&[6401, 6402]));
    d.wait_msg("rules replaced", 1);
    assert_eq!(p.udp(false, 6402, 2), 0);
    replace_file(&rules, "default_policy = \"allow\"\n[[rule]]\nports = \"1\"\n");
    d.wait_for("invalid", 1, |v| v["level"] == "ERROR");
    let (_, body) = get(&p.a, port, "/metrics");
    assert_eq!(value(&body, &l("egress_rule_packets_total", ",rule=\"no-6401\",action=\"deny\"")), Some(3.0), "{body}");
    assert_eq!(value(&body, &l("egress_rule_packets_total", ",rule=\"no-6402\",action=\"deny\"")), Some(2.0), "{body}");
    assert_eq!(value(&body, &l("egress_ruleset_generation", "")), Some(2.0), "{body}");
    assert_eq!(value(&body, &l("egress_reloads_total", "")), Some(2.0), "{body}");
    assert_eq!(value(&body, &l("egress_reload_failures_total", "")), Some(1.0), "{body}");

    // Only /metrics; many connections and garbage do not stop it.
    assert!(get(&p.a, port, "/").0.contains("404"));
    in_ns(&p.a, move || {
        let mut held = Vec::new();
        for i in 0..200 {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                if i % 2 == 0 {
                    let _ = s.write_all(b"\x00\x01 not http at all \xff\r\n\r\n");
                }
                held.push(s);
            }
        }
        drop(held);
    })
    .unwrap();
    let (status, body) = get(&p.a, port, "/metrics");
    assert!(status.contains("200") && body.contains("egress_rule_packets_total"), "{status}");
    assert_eq!(p.udp(false, 6401, 2), 0, "still enforcing");
    assert_eq!(p.udp(false, 6499, 2), 2);
}

#[test]
fn a_port_in_use_is_an_error_at_start() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("metb").expect("namespaces");
    let rules = temp_file("rules.toml", &deny_udp(&[6411]));
    let port = port(1);
    let held = in_ns(&p.a, move || std::net::TcpListener::bind(("127.0.0.1", port))).unwrap().expect("bind");
    let mut d = Daemon::start(&p.a, &config(&p.a_if, &rules), &["--metrics", &format!("127.0.0.1:{port}")]);
    assert_eq!(d.wait_exit(), Some(1), "{}", d.dump());
    assert!(d.dump().contains(&format!("--metrics: cannot listen on 127.0.0.1:{port}")), "{}", d.dump());
    assert!(!p.egress_ok(&["status"]).contains(&p.a_if), "nothing was applied");
    drop(held);
    // A bare port: loopback only.
    let d = Daemon::start(&p.a, &config(&p.a_if, &rules), &["--metrics", &port.to_string()]);
    let v = d.wait_msg("serving Prometheus metrics", 1);
    assert_eq!(v["addr"], format!("127.0.0.1:{port}"), "{v}");
}

#[test]
fn with_netns_the_listener_stays_where_egress_was_started() {
    egress_tests::need_root!("network namespaces, eBPF");
    // egress starts in namespace `home` (standing in for the host) and
    // enforces on an interface of another, chosen with --netns.
    let home = Pair::new("meth").expect("namespaces");
    let p = Pair::new("metn").expect("namespaces");
    let rules = temp_file("rules.toml", &deny_udp(&[6421]));
    let port = port(2);
    let d = Daemon::start(&home.a, &config(&p.a_if, &rules), &["--netns", &p.a, "--metrics", &port.to_string()]);
    let v = d.wait_msg("serving Prometheus metrics", 1);
    let home_ns = in_ns(&home.a, || std::fs::read_link("/proc/thread-self/ns/net").unwrap().display().to_string()).unwrap();
    assert_eq!(v["netns"], home_ns, "{v}");
    assert!(v["message"].as_str().unwrap_or_default().contains("where egress was started"), "{v}");
    d.wait_msg("rules applied", 1);
    let (status, body) = get(&home.a, port, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains(&format!("iface=\"{}\"", p.a_if)), "{body}");
    // Nothing listens in the enforced namespace.
    let refused = in_ns(&p.a, move || TcpStream::connect(("127.0.0.1", port)).is_err()).unwrap();
    assert!(refused, "the metrics port is open inside --netns");
}
