//! Router hooks: guest -> router (forwarding, masquerade) -> outside, in three
//! namespaces. Rules that name the guest subnet, applied to the router's
//! guest-facing interface with tc-ingress and with XDP, allow and deny real
//! TCP/UDP/ICMP flows with exact counters; the same rules on the outside
//! interface's tc-egress never match (the source is already translated). One
//! interface carrying several hooks with different rule sets; XDP refused
//! cleanly when another XDP program holds the interface; generic XDP where the
//! device has no native mode. Needs root.

use egress_tests::{deny_udp, router::Router, temp_file};
use serde_json::Value;

const GUEST_RULES: &str = r#"
default_policy = "allow"

[[rule]]
name = "guest-no-udp-5301"
action = "deny"
src = ["198.51.100.0/24", "2001:db8:10::/64"]
protocol = "udp"
ports = "5301"

[[rule]]
name = "guest-no-tcp-5302"
action = "deny"
src = ["198.51.100.0/24", "2001:db8:10::/64"]
protocol = "tcp"
ports = "5302"

[[rule]]
name = "guest-no-ping"
action = "deny"
src = "198.51.100.0/24"
protocol = "icmp"
icmp_type = 8

[[rule]]
name = "guest-udp"
action = "allow"
src = ["198.51.100.0/24", "2001:db8:10::/64"]
protocol = "udp"
"#;

fn packets(v: &Value) -> Vec<u64> {
    v["rules"].as_array().unwrap().iter().map(|r| r["packets"].as_u64().unwrap()).collect()
}

fn delta(after: &Value, before: &Value) -> Vec<u64> {
    packets(after).iter().zip(packets(before)).map(|(a, b)| a - b).collect()
}

fn apply(r: &Router, iface: &str, hook: &str, rules: &str) -> Value {
    let f = temp_file("rules.toml", rules);
    let out = r.egress_ok(&["apply", "--iface", iface, "--hook", hook, "--rules", f.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// The guest's traffic on the router's guest-facing interface, on `hook`.
fn guest_side(hook: &str, mode: &str) {
    let r = Router::new(&hook[..3]).expect("namespaces");
    r.settle();
    let a = apply(&r, &r.rg, hook, GUEST_RULES);
    assert_eq!((a["hook"].as_str(), a["mode"].as_str()), (Some(hook), Some(mode)), "{a}");
    let before = r.counters(&r.rg, hook);
    assert_eq!(before["hook"], hook);

    assert_eq!(r.udp(false, 5301, 20), 0, "guest UDP to 5301 denied ({hook})");
    assert_eq!(r.udp(true, 5301, 10), 0, "guest UDP/IPv6 to 5301 denied ({hook})");
    assert_eq!(r.udp(false, 5303, 20), 20, "guest UDP to 5303 allowed ({hook})");
    assert_eq!(r.udp(true, 5303, 5), 5, "guest UDP/IPv6 to 5303 allowed ({hook})");
    assert_eq!(r.ping(false, 4), 0, "guest ping denied ({hook})");
    assert_eq!(r.ping(true, 2), 2, "guest ping6 allowed ({hook}): the rule is IPv4 only");
    let mid = r.counters(&r.rg, hook);
    assert_eq!(delta(&mid, &before), vec![30, 0, 4, 25], "exact per-rule counts ({hook}): {mid}");

    assert!(!r.tcp(false, 5302), "guest TCP to 5302 refused ({hook})");
    assert!(r.tcp(false, 5304), "guest TCP to 5304 works ({hook})");
    assert!(r.tcp(true, 5304), "guest TCP/IPv6 to 5304 works ({hook})");
    let after = r.counters(&r.rg, hook);
    let d = delta(&after, &mid);
    assert!(d[1] >= 1, "the refused SYNs count for guest-no-tcp-5302 ({hook}): {after}");
    assert_eq!((d[0], d[2], d[3]), (0, 0, 0), "TCP counts only for the TCP rule ({hook}): {after}");

    // status lists the hook and how it is attached.
    let st: Value = serde_json::from_str(&r.egress_ok(&["status", "--json"])).unwrap();
    let mine: Vec<&Value> = st["interfaces"].as_array().unwrap().iter().filter(|i| i["netns"] == r.router.as_str()).collect();
    assert_eq!(mine.len(), 1, "{st}");
    assert_eq!((mine[0]["hook"].as_str(), mine[0]["mode"].as_str(), mine[0]["link"].as_str()), (Some(hook), Some(mode), Some("attached")));

    // Detach: the guest's traffic flows again.
    let out = r.egress_ok(&["detach", "--iface", &r.rg, "--hook", hook]);
    assert!(out.contains("detached"), "{out}");
    assert_eq!(r.udp(false, 5301, 5), 5);
    assert_eq!(r.ping(false, 2), 2);
}

#[test]
fn guest_subnet_rules_on_tc_ingress() {
    egress_tests::need_root!("network namespaces, eBPF");
    guest_side("tc-ingress", "tcx");
}

#[test]
fn guest_subnet_rules_on_xdp_native() {
    egress_tests::need_root!("network namespaces, eBPF");
    guest_side("xdp", "native");
}

#[test]
fn guest_subnet_rules_do_not_match_after_snat() {
    egress_tests::need_root!("network namespaces, eBPF");
    let r = Router::new("snat").expect("namespaces");
    r.settle();
    apply(&r, &r.ro, "tc-egress", GUEST_RULES);
    let before = r.counters(&r.ro, "tc-egress");
    assert_eq!(r.udp(false, 5301, 20), 20, "on the outside interface the guest's source is already the router's");
    assert_eq!(r.ping(false, 3), 3);
    assert!(r.tcp(false, 5302));
    let after = r.counters(&r.ro, "tc-egress");
    assert_eq!(delta(&after, &before), vec![0, 0, 0, 0], "no guest-subnet rule matches after SNAT: {after}");
    let def = after["default"]["packets"].as_u64().unwrap() - before["default"]["packets"].as_u64().unwrap();
    assert!(def >= 23, "the translated packets fall to the default policy: {after}");
}

#[test]
fn one_interface_three_hooks_three_rule_sets() {
    egress_tests::need_root!("network namespaces, eBPF");
    let r = Router::new("three").expect("namespaces");
    r.settle();
    apply(&r, &r.rg, "xdp", &deny_udp(&[5311]));
    apply(&r, &r.rg, "tc-ingress", &deny_udp(&[5312]));
    // tc-egress of rg carries the outside's replies to the guest: deny what comes back from 5313.
    apply(
        &r,
        &r.rg,
        "tc-egress",
        "default_policy = \"allow\"\n[[rule]]\nname = \"no-reply-from-5313\"\naction = \"deny\"\nprotocol = \"udp\"\nsrc = \"203.0.113.2/32\"\n",
    );
    assert_eq!(r.udp(false, 5311, 5), 0);
    assert_eq!(r.udp(false, 5312, 5), 0);
    assert_eq!(r.udp(false, 5314, 5), 5, "other ports pass every hook");
    let c = |hook: &str| packets(&r.counters(&r.rg, hook));
    assert_eq!(c("xdp"), vec![5], "XDP saw 5311 (and dropped it before tc-ingress)");
    assert_eq!(c("tc-ingress"), vec![5], "tc-ingress saw 5312 only: XDP dropped 5311 first");
    assert_eq!(c("tc-egress"), vec![0], "nothing came back from the outside");
    let st: Value = serde_json::from_str(&r.egress_ok(&["status", "--json"])).unwrap();
    let mut hooks: Vec<String> = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["netns"] == r.router.as_str() && i["iface"] == "rg")
        .map(|i| i["hook"].as_str().unwrap().to_string())
        .collect();
    hooks.sort();
    assert_eq!(hooks, vec!["tc-egress", "tc-ingress", "xdp"], "{st}");
    // Replacing the XDP rule set (bpf_link_update on the XDP link) takes effect.
    apply(&r, &r.rg, "xdp", &deny_udp(&[5314]));
    assert_eq!(r.udp(false, 5314, 5), 0, "the new XDP rules deny 5314");
    assert_eq!(r.udp(false, 5311, 5), 5, "and no longer 5311");
    apply(&r, &r.rg, "xdp", &deny_udp(&[5311]));
    // Detaching one hook leaves the others.
    r.egress_ok(&["detach", "--iface", "rg", "--hook", "xdp"]);
    assert_eq!(r.udp(false, 5311, 5), 5);
    assert_eq!(r.udp(false, 5312, 5), 0);
    assert!(r.egress(&["counters", "--iface", "rg", "--hook", "xdp"]).status.code() == Some(1));
    assert_eq!(c("tc-ingress"), vec![10]);
}

#[test]
fn xdp_refused_when_another_program_holds_the_interface() {
    egress_tests::need_root!("network namespaces, eBPF");
    let r = Router::new("busy").expect("namespaces");
    r.settle();
    // tc-ingress rules first: they must stay untouched by the failed XDP apply.
    apply(&r, &r.rg, "tc-ingress", &deny_udp(&[5321]));
    // Someone else's XDP program (the object's empty one, attached by hand).
    let ns = r.router.clone();
    let foreign = egress_tests::in_ns(&ns, || {
        let mut ebpf = aya::Ebpf::load(egress::dataplane::EBPF_OBJECT).expect("load object");
        let p: &mut aya::programs::Xdp = ebpf.program_mut(egress_common::XDP_PASS_PROGRAM_NAME).expect("program").try_into().expect("xdp");
        p.load().expect("load");
        p.attach("rg", aya::programs::XdpMode::Skb).expect("attach foreign XDP");
        ebpf
    })
    .expect("in router namespace");
    let f = temp_file("rules.toml", &deny_udp(&[5322]));
    let o = r.egress(&["apply", "--iface", "rg", "--hook", "xdp", "--rules", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot take egress's XDP program: another XDP program is attached"), "{err}");
    assert_eq!(r.udp(false, 5321, 3), 0, "the tc-ingress rules stay");
    assert_eq!(r.udp(false, 5322, 3), 3);
    let st: Value = serde_json::from_str(&r.egress_ok(&["status", "--json"])).unwrap();
    let hooks: Vec<&Value> =
        st["interfaces"].as_array().unwrap().iter().filter(|i| i["netns"] == r.router.as_str()).map(|i| &i["hook"]).collect();
    assert_eq!(hooks, vec!["tc-ingress"], "no XDP state left behind: {st}");
    drop(foreign);
}

/// A device without a native XDP mode (a bridge): egress attaches in generic
/// mode, says so, and enforces on what arrives through it.
#[test]
fn xdp_generic_where_the_driver_has_no_native_mode() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = egress_tests::Pair::new("xgen").expect("namespaces");
    // a's address moves from its veth to a bridge over it: traffic from b is
    // delivered up through the bridge device.
    let br = format!("br{}", &p.a_if[2..]);
    for args in [
        vec!["link", "add", br.as_str(), "type", "bridge"],
        vec!["addr", "flush", "dev", p.a_if.as_str()],
        vec!["link", "set", p.a_if.as_str(), "master", br.as_str()],
        vec!["addr", "add", "192.0.2.1/24", "dev", br.as_str()],
        vec!["link", "set", br.as_str(), "up"],
    ] {
        let ok = std::process::Command::new("ip").args(["-n", &p.a]).args(&args).status().unwrap().success();
        assert!(ok, "ip {args:?}");
    }
    let f = temp_file("rules.toml", &deny_udp(&[5331]));
    let out = p.egress_ok(&["apply", "--iface", &br, "--hook", "xdp", "--rules", f.to_str().unwrap(), "--json"]);
    let a: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((a["hook"].as_str(), a["mode"].as_str()), (Some("xdp"), Some("generic")), "{a}");
    let to_a = |port| egress_tests::udp(&p.b, &p.a, egress_tests::A4.into(), port, 3);
    // ARP first (not IP: passes), then the rules.
    let _ = to_a(5332);
    assert_eq!((to_a(5331), to_a(5332)), (0, 3), "generic XDP drops the denied datagrams only");
    let c: Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &br, "--hook", "xdp", "--json"])).unwrap();
    assert_eq!((c["mode"].as_str(), c["rules"][0]["packets"].as_u64()), (Some("generic"), Some(3)), "{c}");
    p.egress_ok(&["detach", "--iface", &br, "--hook", "xdp"]);
    assert_eq!(to_a(5331), 3, "detached");
}
