//! The kernel side of the limits: a rule set whose maps the kernel cannot
//! allocate (a memory cgroup's limit) is refused with a clear error and the rules
//! enforced before stay; a rule file at the full 262,144 rules loads and its
//! last rule decides packets. (The oldest kernel egress claims, 6.1, is checked
//! by `cargo xtask old-kernel`, which `cargo xtask test` runs.)

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use egress_tests::{Pair, deny_udp, egress_bin, temp_file};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A memory cgroup of this test's own (v2, or v1's memory controller), removed
/// on drop, also when the test fails.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(limit: &str) -> Cgroup {
        let name = format!("egress-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let v2 = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        let (dir, file) = if v2 {
            let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            (PathBuf::from("/sys/fs/cgroup").join(name), "memory.max")
        } else {
            (PathBuf::from("/sys/fs/cgroup/memory").join(name), "memory.limit_in_bytes")
        };
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create the memory cgroup {}: {e}", dir.display()));
        let g = Cgroup { dir };
        fs::write(g.dir.join(file), limit).unwrap_or_else(|e| panic!("set {file}: {e}"));
        g
    }

    /// `egress ARGS` in namespace `ns`, inside this cgroup.
    fn egress_in(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("sh")
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(self.dir.join("cgroup.procs"))
            .args(["ip", "netns", "exec", ns])
            .arg(egress_bin())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run egress {args:?}: {e}"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the command has exited (a moment for the kernel to notice).
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn digest(p: &Pair) -> String {
    let out = p.egress_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"));
    v["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["iface"] == p.a_if.as_str()))
        .map(|i| i["digest"].to_string())
        .unwrap_or_default()
}

/// Maps of 2^24 flow-cache slots a family (1.5 GiB) in a cgroup of 256 MiB:
/// the kernel refuses to create them. The error says which map, why, and what
/// to change; nothing is attached and the previous rules stay enforced. The
/// same file applies once the flow cache is of a size the cgroup allows.
#[test]
fn maps_the_kernel_cannot_allocate_are_refused_and_the_old_rules_stay() {
    egress_tests::need_root!("network namespaces and a memory cgroup");
    let p = Pair::new("nomem").expect("namespaces");
    p.apply_ok(&deny_udp(&[5001]));
    p.settle(false);
    assert_eq!((p.udp(false, 5001, 3), p.udp(false, 5002, 3)), (0, 3), "the first rules");
    let before = digest(&p);

    let g = Cgroup::new("268435456");
    let f = temp_file("next.toml", &deny_udp(&[5002]));
    let o = g.egress_in(&p.a, &["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap(), "--flow-cache", "16777216"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "applied in spite of the limit: {err}");
    assert!(err.contains("create map FLOW_V"), "names the map: {err}");
    assert!(err.contains("Cannot allocate memory"), "says why: {err}");
    assert!(
        err.contains("nothing was attached, and the rules enforced before stay") && err.contains("Lower --flow-cache"),
        "says what holds and what to do: {err}"
    );
    assert_eq!((p.udp(false, 5001, 3), p.udp(false, 5002, 3)), (0, 3), "the previous rules stay enforced");
    assert_eq!(digest(&p), before, "the previous rule set is still the one recorded");

    // The same rules with the default flow cache fit in the same cgroup.
    let o = g.egress_in(&p.a, &["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!((p.udp(false, 5001, 3), p.udp(false, 5002, 3)), (3, 0), "the new rules");
}

/// A rule file at the limit (262,144 rules: the generated realistic set, then
/// one deny rule) loads, and its last rule decides its packets.
#[test]
fn a_rule_file_at_full_capacity_loads_and_its_last_rule_decides() {
    egress_tests::need_root!("network namespaces");
    let max = egress_common::MAX_RULES as usize;
    let mut text = egress::ruleset_gen::realistic(max - 1, 16, 7);
    text.push_str("[[rule]]\nname = \"last\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"9999\"\n");
    let p = Pair::new("full").expect("namespaces");
    let f = temp_file("full.toml", &text);
    let out = p.egress_ok(&["apply", "--iface", &p.a_if, "--rules", f.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"));
    assert_eq!(v["rules"], max, "{v}");
    p.settle(false);
    let flow = egress::ruleset_gen::FLOW_PORT_BASE;
    assert_eq!((p.udp(false, 9999, 3), p.udp(false, flow, 3)), (0, 3), "the last rule denies, a flow rule allows");
    let (rules, _, _) = p.counters();
    assert_eq!(rules.len(), max);
    assert_eq!(rules[max - 1], 3, "the last rule counted its packets");
}
