//! `egress run` as a real process in a namespace: applies at start, follows rule
//! files (editor-style renames, bad writes, deletion), reloads on SIGHUP, keeps
//! counters, refuses a second instance, survives SIGKILL by adoption, applies
//! rules to interfaces that appear or are re-created, and stops on SIGTERM
//! leaving enforcement in place (or not, with --detach-on-exit). Needs root.

use std::{process::Command, time::Duration};

use egress_tests::{A4, Daemon, Pair, cpu_ticks, deny_udp, egress_bin, replace_file, temp_file};
use serde_json::Value;

fn settle(p: &Pair) {
    p.settle(false);
}

fn config(ifaces: &[(&str, &std::path::Path)]) -> std::path::PathBuf {
    let mut s = String::new();
    for (name, rules) in ifaces {
        s.push_str(&format!("[[interface]]\nname = \"{name}\"\nrules = \"{}\"\n\n", rules.display()));
    }
    temp_file("egress.toml", &s)
}

fn is(v: &Value, msg: &str, iface: &str) -> bool {
    v["message"].as_str().is_some_and(|m| m.contains(msg)) && v["iface"] == iface
}

#[test]
fn follows_the_rule_file_and_keeps_old_rules_on_bad_input() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("run").expect("namespaces");
    settle(&p);
    let rules = temp_file("rules.toml", &deny_udp(&[5001]));
    let cfg = config(&[(&p.a_if, &rules)]);
    let mut d = Daemon::start(&p.a, &cfg, &[]);
    d.wait_for("applied", 1, |v| is(v, "rules applied", &p.a_if));
    assert_eq!(p.udp(false, 5001, 3), 0);

    // An editor writes a new file and renames it over the old one.
    replace_file(&rules, &deny_udp(&[5001, 5002]));
    let v = d.wait_for("replaced", 1, |v| is(v, "rules replaced", &p.a_if));
    assert_eq!((v["kept"].as_u64(), v["generation"].as_u64()), (Some(1), Some(2)), "{v}");
    assert_eq!(p.udp(false, 5002, 2), 0);
    assert_eq!(p.udp(false, 5001, 2), 0);
    let (c, _, json) = p.counters();
    assert_eq!(c, vec![5, 2], "no-5001 kept its 3 and added 2: {json}");

    // Truncated mid-write: logged with exactly `egress check`'s messages; old rules stay.
    let good = std::fs::read_to_string(&rules).unwrap();
    let cut = &good[..good.len() - 12];
    std::fs::write(&rules, cut).unwrap();
    let err = d.wait_for("invalid", 1, |v| v["level"] == "ERROR" && v["iface"] == p.a_if.as_str());
    let check = Command::new(egress_bin()).args(["check", "--rules"]).arg(&rules).output().unwrap();
    assert_eq!(check.status.code(), Some(2));
    let check_msg = String::from_utf8_lossy(&check.stderr).trim().trim_start_matches("error: ").to_string();
    let logged = err["message"].as_str().unwrap();
    assert!(logged.starts_with(&check_msg), "logged:\n{logged}\n`egress check`:\n{check_msg}");
    assert!(logged.contains("the running rules stay enforced"), "{logged}");
    assert_eq!(p.udp(false, 5002, 2), 0, "still enforced");
    // Logged once: reading the file must not set off the watch again (a loop).
    std::thread::sleep(Duration::from_millis(400));
    let errors = d.log().iter().filter(|v| v["level"] == "ERROR").count();
    assert_eq!(errors, 1, "{}", d.dump());
    let r = d.log().iter().filter(|v| v["message"] == "reconciling").count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.log().iter().filter(|v| v["message"] == "reconciling").count(), r, "reconciling in a loop: {}", d.dump());
    assert!(cpu_ticks(d.pid()) < 100, "an idle service burns CPU");

    // Deleted, then a directory in its place (unreadable as a file): logged, old rules stay.
    std::fs::remove_file(&rules).unwrap();
    d.wait_for("deleted", 1, |v| v["level"] == "ERROR" && v["message"].as_str().is_some_and(|m| m.contains("read rule file")));
    std::fs::create_dir(&rules).unwrap();
    d.wait_for("a directory", 2, |v| v["level"] == "ERROR" && v["message"].as_str().is_some_and(|m| m.contains("read rule file")));
    assert_eq!(p.udp(false, 5001, 2), 0, "still enforced");
    std::fs::remove_dir(&rules).unwrap();

    // Back to a good file: applied; counters of unchanged rules continue.
    replace_file(&rules, &deny_udp(&[5002]));
    let v = d.wait_for("replaced", 2, |v| is(v, "rules replaced", &p.a_if));
    assert_eq!(v["kept"], 1, "{v}");
    let removed = d.wait_for("removed", 1, |v| is(v, "rule removed", &p.a_if));
    assert_eq!((removed["rule"].as_str(), removed["packets"].as_u64()), (Some("no-5001"), Some(7)), "{removed}");
    assert_eq!(p.udp(false, 5001, 2), 2);
    let (c, _, json) = p.counters();
    assert_eq!(c, vec![4], "no-5002: 2 + 2, kept across both replacements: {json}");

    // Idle: no work at all (the watch must not react to the service's own reads
    // of the rule file, which would make every reconciliation set off the next).
    std::thread::sleep(Duration::from_millis(300));
    let reconciling = |d: &Daemon| d.log().iter().filter(|v| v["message"] == "reconciling").count();
    let (before, ticks) = (reconciling(&d), cpu_ticks(d.pid()));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(reconciling(&d), before, "reconciliations while idle: {}", d.dump());
    assert!(cpu_ticks(d.pid()) - ticks <= 5, "idle for 1 s but used CPU: {}", d.dump());

    // SIGHUP reloads (nothing changed: nothing replaced); SIGTERM stops and leaves enforcement.
    d.signal(libc::SIGHUP);
    d.wait_msg("SIGHUP", 1);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.dump());
    assert_eq!(d.log().iter().filter(|v| is(v, "rules replaced", &p.a_if)).count(), 2, "SIGHUP on unchanged files replaces nothing");
    assert_eq!(p.udp(false, 5002, 2), 0, "enforcement stays after SIGTERM");
}

#[test]
fn one_service_per_interface_and_adoption_after_sigkill() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("adopt").expect("namespaces");
    settle(&p);
    let rules = temp_file("rules.toml", &deny_udp(&[5001]));
    let cfg = config(&[(&p.a_if, &rules)]);
    let d = Daemon::start(&p.a, &cfg, &[]);
    d.wait_for("applied", 1, |v| is(v, "rules applied", &p.a_if));

    let second = Command::new("ip").args(["netns", "exec", &p.a]).arg(egress_bin()).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another `egress run`") && err.contains(&p.a_if), "{err}");

    assert_eq!(p.udp(false, 5001, 4), 0);
    d.signal(libc::SIGKILL);
    drop(d);
    assert_eq!(p.udp(false, 5001, 3), 0, "enforcement stays after SIGKILL");
    let d = Daemon::start(&p.a, &cfg, &[]);
    let v = d.wait_for("adopted", 1, |v| is(v, "adopted", &p.a_if));
    assert_eq!(v["generation"], 1, "adopted, not re-applied: {v}");
    assert_eq!(p.udp(false, 5001, 2), 0);
    let (c, _, json) = p.counters();
    assert_eq!(c, vec![9], "counters kept across the kill: {json}");
    // A change after adoption keeps them too.
    replace_file(&rules, &deny_udp(&[5001, 5003]));
    d.wait_for("replaced", 1, |v| is(v, "rules replaced", &p.a_if));
    let (c, _, json) = p.counters();
    assert_eq!(c, vec![9, 0], "{json}");
}

/// A rule file of 21 rules, each to its own destination (so that a change to
/// one recompiles incrementally); rule r7 denies TCP port `port`.
fn twenty_rules(port: u16) -> String {
    let mut s = deny_udp(&[5001]);
    for i in 1..=20 {
        let port = if i == 7 { port } else { 6000 + i };
        s.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\naction = \"deny\"\ndst = \"203.0.113.{i}/32\"\nprotocol = \"tcp\"\nports = \"{port}\"\n"
        ));
    }
    s
}

/// After a restart adopts what is enforced, the first change recompiles only
/// what it reaches: the service parsed and compiled the file at adoption.
#[test]
fn the_first_change_after_adoption_is_incremental() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("prime").expect("namespaces");
    let file = twenty_rules;
    let rules = temp_file("rules.toml", &file(7000));
    let cfg = config(&[(&p.a_if, &rules)]);
    let d = Daemon::start(&p.a, &cfg, &[]);
    d.wait_for("applied", 1, |v| is(v, "rules applied", &p.a_if));
    d.signal(libc::SIGKILL);
    drop(d);
    let d = Daemon::start(&p.a, &cfg, &[]);
    d.wait_for("adopted", 1, |v| is(v, "adopted", &p.a_if));
    replace_file(&rules, &file(7001));
    let v = d.wait_for("replaced", 1, |v| is(v, "rules replaced", &p.a_if));
    assert_eq!((v["path"].as_str(), v["compile"].as_str()), (Some("hot"), Some("incremental")), "{v}");
    assert_eq!((v["kept"].as_u64(), v["removed"].as_u64()), (Some(20), Some(1)), "only the changed rule restarts its counters: {v}");
}

#[test]
fn interfaces_that_appear_later_or_are_recreated_get_their_rules() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("late").expect("namespaces");
    let rules = temp_file("rules.toml", &deny_udp(&[5001]));
    let cfg = config(&[("late0", &rules)]);
    let d = Daemon::start(&p.a, &cfg, &["--detach-on-exit"]);
    d.wait_for("missing", 1, |v| v["level"] == "WARN" && v["iface"] == "late0");

    let make = || {
        let ok = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "{args:?}");
        ok(&["link", "add", "late0", "netns", &p.a, "type", "veth", "peer", "name", "late1", "netns", &p.b]);
        ok(&["-n", &p.a, "addr", "add", "198.51.100.1/24", "dev", "late0"]);
        ok(&["-n", &p.b, "addr", "add", "198.51.100.2/24", "dev", "late1"]);
        ok(&["-n", &p.a, "link", "set", "late0", "up"]);
        ok(&["-n", &p.b, "link", "set", "late1", "up"]);
    };
    let udp_late = |port: u16, n: u32| -> u32 {
        let srv = egress_tests::in_ns_io(&p.b, move || std::net::UdpSocket::bind(("0.0.0.0", port))).unwrap();
        srv.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        egress_tests::in_ns(&p.a, move || {
            let c = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..n {
                let _ = c.send_to(b"x", ("198.51.100.2", port));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 8];
        while srv.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    };
    make();
    d.wait_for("applied", 1, |v| is(v, "rules applied", "late0"));
    for _ in 0..20 {
        if udp_late(7000, 1) == 1 {
            break;
        }
    }
    assert_eq!(udp_late(5001, 3), 0);
    assert_eq!(udp_late(5002, 2), 2);

    // Deleted and re-created: the new interface gets the rules.
    assert!(Command::new("ip").args(["-n", &p.a, "link", "del", "late0"]).status().unwrap().success());
    make();
    d.wait_for("re-created", 1, |v| is(v, "re-created", "late0"));
    d.wait_for("applied again", 2, |v| is(v, "rules applied", "late0"));
    for _ in 0..20 {
        if udp_late(7000, 1) == 1 {
            break;
        }
    }
    assert_eq!(udp_late(5001, 3), 0);

    // --detach-on-exit: SIGTERM removes the rules.
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.dump());
    assert_eq!(udp_late(5001, 2), 2, "detached on exit");
    let st = Command::new("ip").args(["netns", "exec", &p.a]).arg(egress_bin()).args(["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["interfaces"].as_array().unwrap().iter().all(|i| i["netns"] != p.a.as_str()), "nothing left in this namespace: {v}");
}

#[test]
fn bad_config_or_no_valid_rule_file_at_start_exits_2() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("badcfg").expect("namespaces");
    let cfg = temp_file("egress.toml", "[[interface]]\nname = \"eth9\"\nrule = \"x.toml\"\n");
    let o = Command::new("ip").args(["netns", "exec", &p.a]).arg(egress_bin()).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("egress.toml:3: interface 'eth9', field 'rule': unknown key 'rule' (did you mean 'rules'?)"), "{err}");

    let bad = temp_file("bad.toml", "default_policy = \"allow\"\n[[rule]]\nports = \"9-1\"\nprotocol = \"udp\"\n");
    let cfg = config(&[(&p.a_if, &bad)]);
    let mut d = Daemon::start(&p.a, &cfg, &[]);
    assert_eq!(d.wait_exit(), Some(2), "{}", d.dump());
    assert!(d.dump().contains("bad.toml:3: rule 'rule-1', field 'ports'"), "{}", d.dump());
}

/// dist/egress.service is a unit systemd accepts (ExecStart pointed at the built binary).
#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/egress.service")).unwrap();
    let bin = std::fs::canonicalize(egress_bin()).unwrap();
    let unit = unit.replace("/usr/local/bin/egress", bin.to_str().unwrap());
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let f = temp_file("egress.service", &unit);
    let o = Command::new("systemd-analyze").arg("verify").arg(&f).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("egress.service"), "systemd-analyze verify:\n{err}");
}

/// The config file is followed too: another rule file for an interface is
/// applied, an invalid config is logged and changes nothing, an interface
/// removed from the config has its rules detached.
#[test]
fn follows_the_config_file() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("cfg").expect("namespaces");
    settle(&p);
    let one = temp_file("one.toml", &deny_udp(&[5001]));
    let two = temp_file("two.toml", &deny_udp(&[5002]));
    let cfg = config(&[(&p.a_if, &one)]);
    let d = Daemon::start(&p.a, &cfg, &[]);
    d.wait_for("applied", 1, |v| is(v, "rules applied", &p.a_if));
    assert_eq!(p.udp(false, 5001, 2), 0);

    replace_file(&cfg, &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\n", p.a_if, two.display()));
    d.wait_for("replaced", 1, |v| is(v, "rules replaced", &p.a_if));
    assert_eq!(p.udp(false, 5001, 2), 2);
    assert_eq!(p.udp(false, 5002, 2), 0);

    replace_file(&cfg, &format!("[[interface]]\nname = \"{}\"\nrulez = \"{}\"\n", p.a_if, one.display()));
    let e =
        d.wait_for("bad config", 1, |v| v["level"] == "ERROR" && v["message"].as_str().is_some_and(|m| m.contains("did you mean 'rules'")));
    assert!(e["message"].as_str().unwrap().contains("the running config stays in force"), "{e}");
    assert_eq!(p.udp(false, 5002, 2), 0, "still enforced");

    replace_file(&cfg, "[[interface]]\nname = \"some-other0\"\nrules = \"/nonexistent.toml\"\n");
    d.wait_for("detached", 1, |v| is(v, "rules detached", &p.a_if));
    assert_eq!(p.udp(false, 5002, 2), 2, "removed from the config: no longer filtered");
}

/// An `unshare -n` shell is a namespace without a name: egress addresses its
/// interfaces from inside, names it "net:[INODE]", and sees its link severed
/// once the shell (the namespace's last user) is gone.
#[test]
fn unnamed_namespace_from_an_unshare_shell() {
    egress_tests::need_root!("network namespaces, eBPF");
    let rules = temp_file("r.toml", &deny_udp(&[5001]));
    let bin = egress_bin();
    let script = format!(
        "set -e; ip link add un0 type veth peer name un1; ip link set un0 up; ip link set un1 up; \
         {b} apply --iface un0 --rules {r} --json; {b} status --json",
        b = bin.display(),
        r = rules.display()
    );
    let o = Command::new("unshare").args(["-n", "sh", "-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let mut lines = out.lines();
    let applied: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let netns = applied["netns"].as_str().unwrap().to_string();
    assert!(netns.starts_with("net:["), "{applied}");
    let pinned = applied["pinned"].as_str().unwrap().to_string();
    let status: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let mine = status["interfaces"].as_array().unwrap().iter().find(|i| i["pinned"] == pinned.as_str()).cloned().unwrap();
    assert_eq!((mine["iface"].as_str(), mine["link"].as_str()), (Some("un0"), Some("attached")), "{status}");
    // The shell has exited: its namespace and interfaces go away.
    let mut link = String::new();
    for _ in 0..100 {
        let st: Value = serde_json::from_slice(&Command::new(&bin).args(["status", "--json"]).output().unwrap().stdout).unwrap();
        link = st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["pinned"] == pinned.as_str())
            .map(|i| i["link"].as_str().unwrap().to_string())
            .unwrap_or_default();
        if link == "severed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(link, "severed");
    let o = Command::new(&bin).args(["status", "--prune", "--json"]).output().unwrap();
    assert!(o.status.success());
    assert!(!std::path::Path::new(&pinned).exists());
}

#[test]
fn xdp_and_stateful_interfaces_and_a_lost_companion_is_reattached() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("runh").expect("namespaces");
    settle(&p);
    let stateful = temp_file("stateful.toml", &format!("stateful = true\n{}", deny_udp(&[5802])));
    let xdp = temp_file("xdp.toml", &deny_udp(&[5801]));
    let cfg = temp_file(
        "egress.toml",
        &format!(
            "[[interface]]\nname = \"{a}\"\nrules = \"{}\"\n\n[[interface]]\nname = \"{a}\"\nhook = \"xdp\"\nrules = \"{}\"\n",
            stateful.display(),
            xdp.display(),
            a = p.a_if
        ),
    );
    let mut d = Daemon::start(&p.a, &cfg, &[]);
    d.wait_for("applied", 2, |v| is(v, "rules applied", &p.a_if));
    // XDP on a's interface drops what arrives from b for port 5801; tc-egress
    // (stateful) drops what a sends to port 5802.
    assert_eq!(egress_tests::udp(&p.b, &p.a, A4.into(), 5801, 3), 0, "XDP drops arriving datagrams");
    assert_eq!(egress_tests::udp(&p.b, &p.a, A4.into(), 5803, 2), 2);
    assert_eq!(p.udp(false, 5802, 2), 0, "tc-egress drops leaving datagrams");
    let c: Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--hook", "xdp", "--json"])).unwrap();
    assert_eq!((c["hook"].as_str(), c["mode"].as_str(), c["rules"][0]["packets"].as_u64()), (Some("xdp"), Some("native"), Some(3)), "{c}");
    let mine = || -> Vec<Value> {
        let st: Value = serde_json::from_str(&p.egress_ok(&["status", "--json"])).unwrap();
        st["interfaces"].as_array().unwrap().iter().filter(|i| i["netns"] == p.a.as_str()).cloned().collect()
    };
    let tc = mine().into_iter().find(|i| i["hook"] == "tc-egress").expect("the tc-egress attachment");
    assert_eq!((tc["stateful"].as_bool(), tc["companion"].as_str()), (Some(true), Some("tc-ingress (tcx)")), "{tc}");

    // The companion's link goes (its pin removed): the attachment is no longer
    // whole, status says so, and the periodic check attaches it again.
    let companion = std::path::Path::new(tc["pinned"].as_str().unwrap()).join("companion");
    std::fs::remove_file(&companion).unwrap();
    d.wait_for("replaced", 1, |v| is(v, "rules replaced", &p.a_if));
    assert!(companion.exists(), "the companion is pinned again: {}", d.dump());
    let tc = mine().into_iter().find(|i| i["hook"] == "tc-egress").unwrap();
    assert_eq!(tc["link"], "attached", "{tc}");
    assert_eq!(p.udp(false, 5802, 2), 0, "still enforced");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.dump());
}

#[test]
fn run_help_keeps_the_config_example_as_written() {
    let out = std::process::Command::new(egress_tests::egress_bin()).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  [[interface]]",
        "  name = \"eth1\"                     # required",
        "  rules = \"/etc/egress/eth1.toml\"   # required: a rule file",
        "  [[cgroup]]                        # a service's or container's processes",
        "  debug = false                     # optional",
    ] {
        assert!(help.lines().any(|l| l == line), "missing line {line:?} in:\n{help}");
    }
}

/// The linter runs after the reload is logged, on a thread of its own: its
/// warnings still reach the log, once per reload, and the parse it works on
/// comes back for the next change's incremental parse and compile.
#[test]
fn lint_warnings_follow_each_reload_without_holding_it_up() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("rlint").expect("namespaces");
    settle(&p);
    let with = |port: u16| {
        twenty_rules(port)
            + "[[rule]]\nname = \"pointless\"\naction = \"allow\"\ndst = \"203.0.113.200/32\"\nprotocol = \"tcp\"\nports = \"7\"\n"
    };
    let rules = temp_file("rules.toml", &with(7000));
    let cfg = config(&[(&p.a_if, &rules)]);
    let d = Daemon::start(&p.a, &cfg, &[]);
    d.wait_for("applied", 1, |v| is(v, "rules applied", &p.a_if));
    let redundant =
        |v: &Value| v["level"] == "WARN" && v["kind"] == "redundant" && v["rule"] == "pointless" && v["iface"] == p.a_if.as_str();
    d.wait_for("the warning", 1, redundant);
    for (n, port) in [(2, 7001), (3, 7002)] {
        replace_file(&rules, &with(port));
        let v = d.wait_for("replaced", n - 1, |v| is(v, "rules replaced", &p.a_if));
        assert_eq!(v["compile"], "incremental", "the lint handed the parse back: {v}");
        d.wait_for("the warning again", n, redundant);
    }
    assert_eq!(p.udp(false, 5001, 2), 0, "enforced");
}
