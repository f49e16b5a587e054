//! Workload scope, continued: rules by name (`dst_fqdn`), debug mode and audit
//! mode on a cgroup, and `explain --pid`; real processes in cgroups made by the
//! test, a real DNS server (dnsmasq) in another namespace, real TCP.

use std::net::{IpAddr, Ipv4Addr};

use egress_tests::{
    Pair,
    cgroup::{Client, Servers, TestCgroup},
    dns::{DnsServer, RESOLVER, Record},
    egress_bin, temp_file,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_egress-cgroup-client");
const API: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const PORT: u16 = 8080;

/// Default deny; DNS to the resolver; TCP 8080 to api.example only.
fn rules() -> String {
    format!(
        "default_policy = \"deny\"\n[dns]\nresolvers = [\"{RESOLVER}\"]\nmin_ttl = 1\n\
         [[rule]]\nname = \"dns\"\naction = \"allow\"\nprotocol = \"udp\"\ndst = \"{RESOLVER}\"\nports = \"53\"\n\
         [[rule]]\nname = \"api\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"{PORT}\"\ndst_fqdn = \"api.example\"\n"
    )
}

fn egress(args: &[&str]) -> std::process::Output {
    std::process::Command::new(egress_bin()).args(args).output().expect("run egress")
}

fn egress_json(args: &[&str]) -> serde_json::Value {
    let out = egress(args);
    assert!(out.status.success(), "egress {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("egress {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn apply(cg: &TestCgroup, rules: &str, extra: &[&str]) -> serde_json::Value {
    let f = temp_file("cgroup-names.toml", rules);
    let mut args = vec!["apply", "--cgroup", cg.as_str(), "--rules", f.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    egress_json(&args)
}

fn packets(cg: &TestCgroup, rule: &str) -> u64 {
    let v = egress_json(&["counters", "--cgroup", cg.as_str(), "--json"]);
    v["rules"].as_array().and_then(|a| a.iter().find(|r| r["name"] == rule)).and_then(|r| r["packets"].as_u64()).unwrap_or(0)
}

#[test]
fn a_cgroup_learns_the_names_its_own_processes_resolve_and_nothing_else() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF, dnsmasq");
    let p = Pair::new("cgfq").expect("namespaces");
    let records = [Record::A("api.example", API.into(), 300), Record::A("other.example", OTHER.into(), 300)];
    let _dns = DnsServer::start(&p, &records, &[]).expect("dnsmasq");
    let _servers = Servers::start(&p.b, &[PORT], &[]).expect("servers");
    let web = TestCgroup::new("fqweb").expect("cgroup");
    let batch = TestCgroup::new("fqbatch").expect("cgroup");
    let v = apply(&web, &rules(), &[]);
    assert_eq!(v["companion"], "cgroup_skb ingress", "{v}");
    apply(&batch, &rules(), &[]);
    let mut a = Client::start(CLIENT, &web.path, &p.a).expect("client");
    let mut b = Client::start(CLIENT, &batch.path, &p.a).expect("client");
    let api = IpAddr::from(API);

    // Before any lookup the name's address is refused at connect(), at once.
    let (e, ms) = a.tcp(api, PORT).expect_err("connected before the lookup");
    assert_eq!(e, "EPERM");
    assert!(ms < 10.0, "EPERM took {ms} ms");

    // The process resolves the name: the cgroup learns it from the answer.
    assert_eq!(a.cmd("lookup 192.0.2.2 api.example"), format!("ok {API}"));
    a.tcp(api, PORT).expect("the first connection after the lookup");
    // A name no rule names: resolved, still refused.
    assert_eq!(a.cmd("lookup 192.0.2.2 other.example"), format!("ok {OTHER}"));
    assert_eq!(a.tcp(OTHER.into(), PORT).map_err(|e| e.0), Err("EPERM".to_string()));

    // Another cgroup with the same rules has not asked: refused there.
    assert_eq!(b.tcp(api, PORT).map_err(|e| e.0), Err("EPERM".to_string()));
    assert_eq!(b.cmd("lookup 192.0.2.2 api.example"), format!("ok {API}"));
    b.tcp(api, PORT).expect("after its own lookup");

    // What was learned, per cgroup, and the rule's counters.
    let learned = egress_json(&["dns", "--cgroup", web.as_str(), "--json"]);
    let names: Vec<&str> = learned.as_array().expect("array").iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(names, ["api.example"], "{learned}");
    assert!(packets(&web, "api") >= 3, "SYN, ACK, data");
    // A connect refused by the default policy counted there: one packet, no bytes.
    let v = egress_json(&["counters", "--cgroup", web.as_str(), "--json"]);
    assert_eq!(v["default"]["packets"], 2, "{v}");
    assert_eq!(v["default"]["bytes"], 0, "{v}");

    // explain sees the learned name on the cgroup too.
    let v = egress_json(&[
        "explain",
        "--cgroup",
        web.as_str(),
        "--proto",
        "tcp",
        "--src",
        "192.0.2.1",
        "--dst",
        &API.to_string(),
        "--dport",
        "8080",
        "--json",
    ]);
    assert_eq!((v["rule"].as_str(), v["action"].as_str(), v["agree"].as_bool()), (Some("api"), Some("allow"), Some(true)), "{v}");
    assert_eq!(v["names"][0]["name"], "api.example", "{v}");
}

#[test]
fn debug_mode_on_a_cgroup_logs_why_it_drops_what_it_cannot_parse() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let p = Pair::new("cgdbg").expect("namespaces");
    p.settle(false);
    let cg = TestCgroup::new("dbg").expect("cgroup");
    let v = apply(
        &cg,
        "default_policy = \"allow\"\n[[rule]]\nname = \"no-9\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"9\"\n",
        &["--debug"],
    );
    assert_eq!(v["debug"], true, "{v}");
    let mut c = Client::start(CLIENT, &cg.path, &p.a).expect("client");
    // The debug twin enforces the same rules.
    assert_eq!(c.udp("192.0.2.2".parse().unwrap(), 9, 1), (0, "EPERM".to_string()));
    // An IPv4 packet that says TCP and carries 2 bytes: truncated, dropped.
    // Version/IHL, TOS, length 22, id, fragment, TTL 64, TCP, checksum, 192.0.2.1 -> 192.0.2.2.
    let raw = "45 00 0016 0000 0000 40 06 0000 c0000201 c0000202 0000".replace(' ', "");
    let a = c.cmd(&format!("raw {raw}"));
    assert!(a == "ok" || a == "err EPERM", "{a}");
    let out = egress(&["log", "--cgroup", cg.as_str(), "--json", "--count", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON line");
    assert_eq!(line["message"], "dropped a 22 byte packet: truncated (a header it needs ends past the end of the packet)", "{line}");
    let v = egress_json(&["counters", "--cgroup", cg.as_str(), "--json"]);
    assert_eq!(v["unclassified"]["truncated_dropped"], 1, "{v}");
}

#[test]
fn explain_names_the_process_and_the_cgroup_whose_rules_decide_for_it() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let p = Pair::new("cgexp").expect("namespaces");
    let svc = TestCgroup::new("exsvc").expect("cgroup");
    let worker = svc.child("worker").expect("child cgroup");
    let bare = TestCgroup::new("exbare").expect("cgroup");
    apply(&svc, "default_policy = \"allow\"\n[[rule]]\nname = \"no-smtp\"\naction = \"deny\"\nprotocol = \"tcp\"\nports = \"25\"\n", &[]);
    let c = Client::start(CLIENT, &worker, &p.a).expect("client");
    let pid = c.pid.to_string();
    let ask = ["explain", "--pid", &pid, "--proto", "tcp", "--dst", "203.0.113.9", "--dport", "25"];
    let v = egress_json(&[&ask[..], &["--json"]].concat());
    assert_eq!((v["rule"].as_str(), v["action"].as_str(), v["agree"].as_bool()), (Some("no-smtp"), Some("deny"), Some(true)), "{v}");
    assert_eq!(v["pid"], c.pid, "{v}");
    assert_eq!(v["comm"], "egress-cgroup-c", "{v}");
    assert_eq!(v["process_cgroup"], worker.display().to_string(), "{v}");
    assert_eq!(v["cgroup"], svc.as_str(), "{v}");
    let out = egress(&ask);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "process    {pid} (egress-cgroup-c) in cgroup {}; decided by the rules of {}",
            worker.display(),
            svc.as_str()
        )),
        "{text}"
    );
    // A process no cgroup rule set covers: said so, exit 1.
    let d = Client::start(CLIENT, &bare.path, &p.a).expect("client");
    let out = egress(&["explain", "--pid", &d.pid.to_string(), "--proto", "tcp", "--dst", "203.0.113.9", "--dport", "25"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cgroup at or above it has egress rules"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn audit_mode_on_a_cgroup_counts_a_deny_and_lets_the_call_through() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let p = Pair::new("cgaud").expect("namespaces");
    p.settle(false);
    let _servers = Servers::start(&p.b, &[PORT], &[]).expect("servers");
    let cg = TestCgroup::new("audit").expect("cgroup");
    let audit = format!(
        "default_policy = \"allow\"\n[[rule]]\nname = \"no-{PORT}\"\naction = \"deny\"\nmode = \"audit\"\nprotocol = \"tcp\"\nports = \"{PORT}\"\n"
    );
    apply(&cg, &audit, &[]);
    let mut c = Client::start(CLIENT, &cg.path, &p.a).expect("client");
    let events = std::process::Command::new(egress_bin())
        .args(["events", "--cgroup", cg.as_str(), "--json", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("egress events");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Not refused at connect(), not dropped: counted on the rule, reported as audit.
    c.tcp("192.0.2.2".parse().unwrap(), PORT).expect("audit lets the connection through");
    assert!(packets(&cg, &format!("no-{PORT}")) >= 3, "SYN, ACK, data counted");
    let out = events.wait_with_output().expect("events");
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).expect("an event");
    assert_eq!((ev["audit"].as_bool(), ev["rule"].as_str()), (Some(true), Some(&*format!("no-{PORT}"))), "{ev}");
    // Enforced: the same rule refuses the call.
    apply(&cg, &audit.replace("mode = \"audit\"\n", ""), &[]);
    assert_eq!(c.tcp("192.0.2.2".parse().unwrap(), PORT).map_err(|e| e.0), Err("EPERM".to_string()));
}
