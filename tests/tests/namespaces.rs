//! Many network namespaces at once (what parallel CI jobs do): the same interface
//! name in several namespaces, each with its own rules and counters; a namespace
//! deleted under live rules, then one of the same shape; `--netns` from the host.
//! Needs root.

use std::{process::Command, time::Duration};

use egress_tests::{Pair, deny_udp, egress_bin, temp_file};
use serde_json::Value;

fn status_from_host() -> Value {
    let o = Command::new(egress_bin()).args(["status", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn entries_for<'a>(v: &'a Value, netns: &str) -> Vec<&'a Value> {
    v["interfaces"].as_array().unwrap().iter().filter(|i| i["netns"] == netns).collect()
}

fn settle(p: &Pair) {
    p.settle(false);
}

#[test]
fn same_interface_name_in_four_namespaces_at_once() {
    egress_tests::need_root!("network namespaces, eBPF");
    let pairs: Vec<Pair> = (0..4).map(|_| Pair::named("same", "veth0", "veth1").expect("namespaces")).collect();
    for p in &pairs {
        settle(p);
    }
    // Apply concurrently, each pair its own port; the last one from the host with --netns.
    std::thread::scope(|s| {
        for (i, p) in pairs.iter().enumerate() {
            s.spawn(move || {
                let f = temp_file("r.toml", &deny_udp(&[5000 + i as u16]));
                let f = f.to_str().unwrap();
                if i == 3 {
                    let o = Command::new(egress_bin()).args(["--netns", &p.a, "apply", "--iface", "veth0", "--rules", f]).output().unwrap();
                    assert!(o.status.success(), "--netns apply: {}", String::from_utf8_lossy(&o.stderr));
                } else {
                    p.egress_ok(&["apply", "--iface", "veth0", "--rules", f]);
                }
            });
        }
    });
    for (i, p) in pairs.iter().enumerate() {
        for (j, port) in (5000u16..5004).enumerate() {
            let want = if i == j { 0 } else { 2 };
            assert_eq!(p.udp(false, port, 2), want, "namespace {i}, port {port}");
        }
        let (rules, _, json) = p.counters();
        assert_eq!(rules, vec![2], "namespace {i} counts only its own traffic: {json}");
        assert_eq!(json["netns"], p.a.as_str());
    }
    let st = status_from_host();
    for p in &pairs {
        let e = entries_for(&st, &p.a);
        assert_eq!(e.len(), 1, "{st}");
        assert_eq!((e[0]["iface"].as_str(), e[0]["link"].as_str()), (Some("veth0"), Some("attached")), "{st}");
    }
    // From the host, --netns reads and detaches another namespace's rules.
    let o = Command::new(egress_bin()).args(["--netns", &pairs[0].a, "counters", "--iface", "veth0", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["rules"][0]["name"], "no-5000", "{v}");
    let o = Command::new(egress_bin()).args(["--netns", &pairs[0].a, "detach", "--iface", "veth0"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(pairs[0].udp(false, 5000, 2), 2, "detached");
    assert_eq!(pairs[1].udp(false, 5001, 2), 0, "the others keep their rules");
    let o = Command::new(egress_bin()).args(["--netns", "no-such-netns-xyz", "status"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-netns-xyz"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn namespace_deleted_under_live_rules_then_recreated() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::named("gone", "eth0", "eth1").expect("namespaces");
    settle(&p);
    let rules = temp_file("r.toml", &deny_udp(&[5555]));
    p.egress_ok(&["apply", "--iface", "eth0", "--rules", rules.to_str().unwrap()]);
    assert_eq!(p.udp(false, 5555, 2), 0);
    let pinned = entries_for(&status_from_host(), &p.a)[0]["pinned"].as_str().unwrap().to_string();

    // Deleted without `egress detach`: the link is severed once the kernel has
    // dismantled the namespace, and status says so.
    p.delete_namespaces();
    let mut link = String::new();
    for _ in 0..100 {
        let st = status_from_host();
        let e: Vec<&Value> = st["interfaces"].as_array().unwrap().iter().filter(|i| i["pinned"] == pinned.as_str()).collect();
        assert_eq!(e.len(), 1, "the dead attachment is still listed until pruned: {st}");
        link = e[0]["link"].as_str().unwrap().to_string();
        if link == "severed" {
            assert_eq!(e[0]["attached"], false);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(link, "severed");

    // A new namespace of the same shape (same names): a fresh attachment, not
    // mistaken for the dead one.
    p.create().expect("namespaces again");
    settle(&p);
    let v: Value = serde_json::from_str(&p.egress_ok(&["apply", "--iface", "eth0", "--rules", rules.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!((v["replaced"].as_bool(), v["generation"].as_u64()), (Some(false), Some(1)), "{v}");
    assert_ne!(v["pinned"].as_str(), Some(pinned.as_str()));
    assert_eq!(p.udp(false, 5555, 3), 0);
    assert_eq!(p.udp(false, 5556, 1), 1);
    let (rules_now, _, json) = p.counters();
    assert_eq!(rules_now, vec![3], "{json}");

    // --prune removes the dead one, keeps the live one.
    let o = Command::new(egress_bin()).args(["status", "--prune", "--json"]).output().unwrap();
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(st["pruned"].as_array().unwrap().iter().any(|e| e["netns"] == p.a.as_str()), "{st}");
    assert!(!std::path::Path::new(&pinned).exists(), "pins of the dead attachment removed");
    let live = entries_for(&st, &p.a);
    assert_eq!(live.len(), 1, "{st}");
    assert_eq!(live[0]["link"], "attached");
}
