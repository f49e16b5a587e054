//! Workload scope: rule sets on cgroups, with real processes in cgroups made
//! by the test (`egress-cgroup-client`) and real TCP and UDP to servers in
//! another namespace.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use egress_tests::{
    Pair,
    cgroup::{Client, Servers, TestCgroup},
    egress_bin, sh, temp_file,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_egress-cgroup-client");
const WEB_DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const DB_DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// The web profile: its API over TCP 80 and DNS-like UDP 53 at 192.0.2.2, nothing else.
const WEB: &str = r#"default_policy = "deny"
[[rule]]
name = "api"
action = "allow"
protocol = "tcp"
dst = "192.0.2.2"
ports = "80"
[[rule]]
name = "lookups"
action = "allow"
protocol = "udp"
dst = "192.0.2.2"
ports = "53"
"#;

/// The database profile: its replicas over TCP 5432 and UDP 5353 at 198.51.100.2.
const DB: &str = r#"default_policy = "deny"
[[rule]]
name = "replicas"
action = "allow"
protocol = "tcp"
dst = "198.51.100.2"
ports = "5432"
[[rule]]
name = "gossip"
action = "allow"
protocol = "udp"
dst = "198.51.100.2"
ports = "5353"
"#;

fn ip(a: Ipv4Addr) -> IpAddr {
    a.into()
}

/// A pair whose server side also holds 198.51.100.2, with servers on every port the tests use.
fn topology(tag: &str) -> (Pair, Servers) {
    let p = Pair::new(tag).expect("namespaces");
    sh(&["ip", "-n", &p.b, "addr", "add", "198.51.100.2/32", "dev", &p.b_if]).expect("second address");
    sh(&["ip", "-n", &p.a, "route", "add", "198.51.100.0/24", "dev", &p.a_if]).expect("route");
    p.settle(false);
    let s = Servers::start(&p.b, &[80, 5432, 8080], &[53, 5353]).expect("servers");
    (p, s)
}

fn apply_cgroup(cg: &std::path::Path, rules: &str) -> serde_json::Value {
    let f = temp_file("cgroup.toml", rules);
    let out = std::process::Command::new(egress_bin())
        .args(["apply", "--cgroup", cg.to_str().unwrap(), "--rules", f.to_str().unwrap(), "--json"])
        .output()
        .expect("run egress");
    assert!(out.status.success(), "apply --cgroup: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("apply JSON")
}

fn counters(cg: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(egress_bin())
        .args(["counters", "--cgroup", cg.to_str().unwrap(), "--json"])
        .output()
        .expect("run egress");
    assert!(out.status.success(), "counters --cgroup: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("counters JSON")
}

/// (packets, bytes) of a rule by name, or of the default row.
fn row(v: &serde_json::Value, name: &str) -> (u64, u64) {
    let r = if name == "(default)" {
        &v["default"]
    } else {
        v["rules"].as_array().and_then(|a| a.iter().find(|r| r["name"] == name)).expect(name)
    };
    (r["packets"].as_u64().unwrap_or(0), r["bytes"].as_u64().unwrap_or(0))
}

#[test]
fn two_cgroups_each_reach_only_their_own_destinations() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let (p, servers) = topology("cg2");
    let root = TestCgroup::new("two").expect("cgroup");
    let (web, db) = (root.child("web").unwrap(), root.child("db").unwrap());
    let a = apply_cgroup(&web, WEB);
    assert_eq!(a["cgroup"], web.to_str().unwrap(), "{a}");
    assert_eq!(a["hook"], "cgroup", "{a}");
    apply_cgroup(&db, DB);
    let mut w = Client::start(CLIENT, &web, &p.a).expect("web client");
    let mut d = Client::start(CLIENT, &db, &p.a).expect("db client");

    // TCP: each reaches its own server; the other's is refused at once.
    assert!(w.tcp(ip(WEB_DST), 80).is_ok());
    assert!(d.tcp(ip(DB_DST), 5432).is_ok());
    assert_eq!(w.tcp(ip(DB_DST), 5432).map_err(|e| e.0), Err("EPERM".into()));
    assert_eq!(d.tcp(ip(WEB_DST), 80).map_err(|e| e.0), Err("EPERM".into()));
    // UDP (sendto): all of its own arrive, none of the other's leave.
    assert_eq!(w.udp(ip(WEB_DST), 53, 7), (7, "-".into()));
    assert_eq!(d.udp(ip(DB_DST), 5353, 5), (5, "-".into()));
    assert_eq!(w.udp(ip(DB_DST), 5353, 3), (0, "EPERM".into()));
    assert_eq!(d.udp(ip(WEB_DST), 53, 2), (0, "EPERM".into()));
    assert_eq!(servers.received(53), 7);
    assert_eq!(servers.received(5353), 5);

    // Exact counters: each datagram once on its rule; each refused call once,
    // with no bytes, on the default policy (deny) of the caller's cgroup.
    // explain: the live classifier of a cgroup, against the reference.
    let out = std::process::Command::new(egress_bin())
        .args([
            "explain",
            "--cgroup",
            web.to_str().unwrap(),
            "--proto",
            "tcp",
            "--src",
            "192.0.2.1",
            "--dst",
            "198.51.100.2",
            "--dport",
            "5432",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((e["action"].as_str(), e["agree"].as_bool(), e["cgroup"].as_str()), (Some("deny"), Some(true), web.to_str()), "{e}");
    let (cw, cd) = (counters(&web), counters(&db));
    assert_eq!(cw["cgroup"], web.to_str().unwrap());
    assert_eq!(row(&cw, "lookups").0, 7, "{cw}");
    assert_eq!(row(&cd, "gossip").0, 5, "{cd}");
    assert_eq!(row(&cw, "(default)"), (1 + 3, 0), "{cw}");
    assert_eq!(row(&cd, "(default)"), (1 + 2, 0), "{cd}");
    assert!(row(&cw, "api").0 >= 3, "the handshake and the byte: {cw}");
}

#[test]
fn a_denied_connect_fails_with_eperm_at_once_and_names_the_caller() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let (p, _servers) = topology("cgperm");
    let cg = TestCgroup::new("perm").expect("cgroup");
    apply_cgroup(&cg.path, WEB);
    let events = std::process::Command::new(egress_bin())
        .args(["events", "--cgroup", cg.as_str(), "--json", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("egress events");
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Client::start(CLIENT, &cg.path, &p.a).expect("client");
    // Warm: the first connect of a fresh process pays for its first socket.
    let _ = c.tcp(ip(WEB_DST), 80);
    let (e, ms) = c.tcp(ip(DB_DST), 5432).expect_err("refused");
    assert_eq!(e, "EPERM");
    assert!(ms < 10.0, "EPERM after {ms} ms (a dropped SYN would take a second or more)");
    let out = events.wait_with_output().expect("events");
    let ev: serde_json::Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or(&[])).expect("event JSON");
    assert_eq!(ev["pid"], c.pid, "{ev}");
    assert_eq!(ev["comm"], "egress-cgroup-c", "{ev}");
    assert_eq!(ev["cgroup"], cg.as_str(), "{ev}");
    assert_eq!(ev["dst"], "198.51.100.2", "{ev}");
    assert_eq!(ev["dport"], 5432, "{ev}");
    assert_eq!(ev["rule"], serde_json::Value::Null, "the default policy: {ev}");
}

#[test]
fn a_moved_process_changes_profile_and_a_child_cgroup_inherits_unless_it_has_its_own() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let (p, _servers) = topology("cgmove");
    let root = TestCgroup::new("move").expect("cgroup");
    let (web, db) = (root.child("web").unwrap(), root.child("db").unwrap());
    apply_cgroup(&web, WEB);
    apply_cgroup(&db, DB);
    let mut c = Client::start(CLIENT, &web, &p.a).expect("client");
    assert!(c.tcp(ip(WEB_DST), 80).is_ok());
    assert!(c.tcp(ip(DB_DST), 5432).is_err());
    c.move_to(&db);
    assert!(c.tcp(ip(DB_DST), 5432).is_ok(), "moved to db: db's profile");
    assert_eq!(c.tcp(ip(WEB_DST), 80).map_err(|e| e.0), Err("EPERM".into()));

    // A child without a rule set of its own: the parent's profile.
    let child = web.join("worker");
    std::fs::create_dir(&child).unwrap();
    c.move_to(&child);
    assert!(c.tcp(ip(WEB_DST), 80).is_ok(), "child inherits web");
    assert!(c.tcp(ip(DB_DST), 5432).is_err());
    assert_eq!(c.udp(ip(WEB_DST), 53, 2), (2, "-".into()));
    // Its own rule set: the nearest one decides, the parent's no longer applies.
    apply_cgroup(&child, "default_policy = \"deny\"\n[[rule]]\nname = \"alt\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"8080\"\n");
    let cw = counters(&web);
    assert!(c.tcp(ip(WEB_DST), 8080).is_ok(), "the child's own profile allows 8080 (web's does not)");
    assert_eq!(c.tcp(ip(WEB_DST), 80).map_err(|e| e.0), Err("EPERM".into()), "the child's own profile denies 80");
    assert_eq!(counters(&web)["default"]["packets"], cw["default"]["packets"], "web's rule set no longer judges the child");
    assert!(row(&counters(&child), "alt").0 >= 3);
    // Detached: the parent's profile again.
    let out = std::process::Command::new(egress_bin()).args(["detach", "--cgroup", child.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.tcp(ip(WEB_DST), 80).is_ok(), "back to web's profile");
    assert_eq!(c.tcp(ip(WEB_DST), 8080).map_err(|e| e.0), Err("EPERM".into()));
}

#[test]
fn with_an_interface_hook_on_the_same_host_both_must_allow() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let (p, servers) = topology("cgiface");
    let cg = TestCgroup::new("iface").expect("cgroup");
    apply_cgroup(&cg.path, DB);
    // The interface denies UDP 5353; the cgroup allows it.
    p.apply_ok("default_policy = \"allow\"\n[[rule]]\nname = \"no-gossip\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"5353\"\n");
    let mut c = Client::start(CLIENT, &cg.path, &p.a).expect("client");
    let (sent, _) = c.udp(ip(DB_DST), 5353, 4);
    assert_eq!(servers.received(5353), 0, "the interface's deny holds ({sent} handed to the stack)");
    assert_eq!(row(&counters(&cg.path), "gossip").0, 4, "the cgroup allowed them");
    let (_, _, v) = p.counters();
    assert_eq!(v["rules"][0]["packets"], 4, "and the interface denied them: {v}");
    // Allowed by both: through.
    assert!(c.tcp(ip(DB_DST), 5432).is_ok());
    // Denied by the cgroup: refused before the interface sees anything.
    assert_eq!(c.tcp(ip(WEB_DST), 80).map_err(|e| e.0), Err("EPERM".into()));
}

#[test]
fn bad_cgroups_are_clear_errors_and_leave_nothing() {
    egress_tests::need_root!("cgroups, eBPF");
    let f = temp_file("cgroup.toml", WEB);
    for (path, why) in
        [("/nonexistent/egress-cgroup", "No such file"), ("/tmp", "not a cgroup v2 directory"), ("/etc/hostname", "not a directory")]
    {
        let out =
            std::process::Command::new(egress_bin()).args(["apply", "--cgroup", path, "--rules", f.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path}");
        assert!(err.contains(why), "{path}: {err}");
    }
    // A cgroup v1 directory, where the host has one.
    if let Some(v1) = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu"].into_iter().find(|p| std::path::Path::new(p).is_dir()) {
        let out =
            std::process::Command::new(egress_bin()).args(["apply", "--cgroup", v1, "--rules", f.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(err.contains("cgroup v1") || err.contains("not a cgroup v2"), "{v1}: {err}");
        }
    }
    let status = std::process::Command::new(egress_bin()).args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let bad = v["cgroups"].as_array().map(|a| a.iter().filter(|c| c["cgroup"] == "/tmp").count()).unwrap_or(0);
    assert_eq!(bad, 0, "{v}");
}

#[test]
fn a_deleted_cgroup_shows_severed_and_prune_removes_what_it_left() {
    egress_tests::need_root!("cgroups, eBPF");
    let root = TestCgroup::new("prune").expect("cgroup");
    let gone = root.child("gone").unwrap();
    let a = apply_cgroup(&gone, WEB);
    let id = a["cgroup_id"].as_u64().expect("cgroup_id");
    std::fs::remove_dir(&gone).expect("rmdir the cgroup");
    let status = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(egress_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ours = |v: &serde_json::Value| {
        v["cgroups"].as_array().cloned().unwrap_or_default().into_iter().filter(|c| c["cgroup_id"] == id).collect::<Vec<_>>()
    };
    let v = status(&["status", "--json"]);
    assert_eq!(ours(&v).len(), 1, "{v}");
    assert_eq!(ours(&v)[0]["link"], "severed", "{v}");
    let v = status(&["status", "--json", "--prune"]);
    assert!(ours(&v).is_empty(), "{v}");
    assert!(v["pruned"].as_array().is_some_and(|p| p.iter().any(|c| c["cgroup"] == gone.to_str().unwrap())), "{v}");
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/egress/cgroup-{id}")).exists());
}

#[test]
fn egress_run_applies_a_cgroup_when_it_appears_and_again_when_it_is_recreated() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let (p, _servers) = topology("cgrun");
    let root = TestCgroup::new("run").expect("cgroup");
    let svc = root.path.join("svc");
    let rules = temp_file("svc.toml", WEB);
    let cfg = temp_file("egress.toml", &format!("[[cgroup]]\npath = \"{}\"\nrules = \"{}\"\n", svc.display(), rules.display()));
    let port = 19_000 + (std::process::id() % 1000) as u16;
    let d = egress_tests::Daemon::start(&p.a, &cfg, &["--detach-on-exit", "--metrics", &port.to_string()]);
    d.wait_for("missing", 1, |v| v["level"] == "WARN" && v["iface"] == svc.to_str().unwrap());
    // The service starts: its cgroup appears, and gets the rules.
    std::fs::create_dir(&svc).unwrap();
    d.wait_msg("rules applied", 1);
    let mut c = Client::start(CLIENT, &svc, &p.a).expect("client");
    assert!(c.tcp(ip(WEB_DST), 80).is_ok());
    assert_eq!(c.tcp(ip(DB_DST), 5432).map_err(|e| e.0), Err("EPERM".into()));
    drop(c);
    // Restarted by its manager: a new cgroup (another id) at the same path.
    std::fs::remove_dir(&svc).unwrap();
    std::fs::create_dir(&svc).unwrap();
    d.wait_msg("cgroup re-created", 1);
    d.wait_msg("rules applied", 2);
    let mut c = Client::start(CLIENT, &svc, &p.a).expect("client");
    assert_eq!(c.tcp(ip(DB_DST), 5432).map_err(|e| e.0), Err("EPERM".into()), "the new cgroup has the rules");
    assert_eq!(row(&counters(&svc), "(default)"), (1, 0));
    // Metrics: the cgroup's series carry its path.
    let body = egress_tests::in_ns(&p.a, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .unwrap();
    let series = format!("egress_default_packets_total{{cgroup=\"{}\",hook=\"cgroup\"", svc.display());
    assert!(body.lines().any(|l| l.starts_with(&series) && l.ends_with(" 1")), "{series} 1 in:\n{body}");
}

#[test]
fn apply_unit_finds_the_units_cgroup() {
    egress_tests::need_root!("cgroups, eBPF");
    // systemd's answer when it runs; here (no systemd as init) its convention:
    // system.slice/UNIT below the cgroup v2 mount.
    let mount = egress::dataplane::cgroup2_mount().expect("cgroup v2");
    let slice = mount.join("system.slice");
    let made_slice = !slice.exists() && std::fs::create_dir(&slice).is_ok();
    let unit = format!("egress-test-{}.service", std::process::id());
    let dir = slice.join(&unit);
    std::fs::create_dir(&dir).expect("the unit's cgroup");
    let f = temp_file("unit.toml", WEB);
    let out = std::process::Command::new(egress_bin())
        .args(["apply", "--unit", &unit, "--rules", f.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let detach = std::process::Command::new(egress_bin()).args(["detach", "--cgroup", dir.to_str().unwrap()]).output().unwrap();
    let _ = std::fs::remove_dir(&dir);
    if made_slice {
        let _ = std::fs::remove_dir(&slice);
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cgroup"], dir.to_str().unwrap(), "{v}");
    assert!(detach.status.success(), "{}", String::from_utf8_lossy(&detach.stderr));
}

#[test]
fn a_server_in_a_stateful_cgroup_answers_its_clients_and_nothing_else() {
    egress_tests::need_root!("cgroups, network namespaces, eBPF");
    let (p, _servers) = topology("cgsf");
    let cg = TestCgroup::new("sf").expect("cgroup");
    let mut srv = Client::start(CLIENT, &cg.path, &p.a).expect("server process");
    srv.listen(7070);
    // A client in the other namespace, to the server in the cgroup.
    let ask = || {
        egress_tests::in_ns(&p.b, || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&"192.0.2.1:7070".parse().unwrap(), Duration::from_millis(1200)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(1200)));
            let mut b = [0u8; 1];
            s.write_all(b"y").is_ok() && s.read_exact(&mut b).is_ok() && b == *b"y"
        })
        .unwrap()
    };
    assert!(ask(), "no rules yet");
    // Default deny, stateless: the server's answers (to the client's port) are denied.
    apply_cgroup(&cg.path, "default_policy = \"deny\"\n");
    assert!(!ask(), "stateless default deny drops the server's answers");
    // Stateful: connections opened from outside are followed; the server answers.
    let a = apply_cgroup(&cg.path, "default_policy = \"deny\"\nstateful = true\n");
    assert_eq!((a["stateful"].as_bool(), a["companion"].as_str()), (Some(true), Some("cgroup_skb ingress")), "{a}");
    assert!(ask(), "stateful: the server answers its clients");
    assert!(ask());
    // Its own outbound calls are still denied, at once.
    assert_eq!(srv.tcp(ip(DB_DST), 5432).map_err(|e| e.0), Err("EPERM".into()));
    // Back to stateless: the companion goes, answers are denied again.
    apply_cgroup(&cg.path, "default_policy = \"deny\"\n");
    assert!(!std::path::Path::new(a["pinned"].as_str().unwrap()).join("companion").exists());
    assert!(!ask());
}

#[test]
fn a_cgroup_removed_during_apply_is_a_clear_error_and_leaves_nothing() {
    egress_tests::need_root!("cgroups, eBPF");
    use std::os::unix::fs::MetadataExt as _;
    let cg = TestCgroup::new("gone").expect("cgroup");
    let id = std::fs::metadata(&cg.path).unwrap().ino();
    // Large enough that loading the maps takes a while after the cgroup is resolved.
    let mut text = String::from("default_policy = \"allow\"\n");
    for i in 0..40_000u32 {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\naction = \"deny\"\nprotocol = \"tcp\"\ndst = \"2001:db8:{:x}:{:x}::/64\"\n",
            i >> 8,
            i & 0xff
        ));
    }
    let f = temp_file("big.toml", &text);
    let child = std::process::Command::new(egress_bin())
        .args(["apply", "--cgroup", cg.as_str(), "--rules", f.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The attachment's folder appears once egress has resolved the cgroup and
    // started loading; the cgroup goes then.
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/egress/cgroup-{id}"));
    let t = std::time::Instant::now();
    while !pins.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(pins.exists(), "egress never started loading");
    std::fs::remove_dir(&cg.path).expect("rmdir the cgroup");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied to a removed cgroup");
    assert!(err.contains(&format!("cgroup {} was removed during apply: nothing attached", cg.as_str())), "{err}");
    // Nothing left: no pins, no state, not in status.
    assert!(!pins.exists(), "{} left behind", pins.display());
    let status = std::process::Command::new(egress_bin()).args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let left = v["cgroups"].as_array().map(|a| a.iter().filter(|c| c["cgroup"] == cg.as_str()).count()).unwrap_or(0);
    assert_eq!(left, 0, "{v}");
}
