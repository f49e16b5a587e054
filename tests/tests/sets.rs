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
    for (port, want) in [(80, 3), (443, 3), (8000, 3), (8050, 3), (8101, 3), (53, 3), (5353, 3), (81, 0), (442, 0), (7999, 0), (8102, 0), (54, 0)] {
        assert_eq!(p.udp(false, port, 3), want, "udp/{port}");
    }
    assert_eq!(p.udp(true, 8100, 2), 2);
    assert_eq!(p.udp(true, 444, 2), 0);
    let (rules, _, v) = p.counters();
    // web: 5 ports x 3 + 2 (IPv6); dns: 2 x 3.
    assert_eq!(&rules[1..], &[17, 6], "{v}");
    assert_eq!(v["rules"][1]["match"], "udp any -> any dport 80,443,8000-8101", "{v}");
}
