//! The compiler's unit tests.

use egress_common::{DST_SRC_ANY, INLINE_LIST, NO_LIST, PCLASS_UDP};

use super::*;

#[test]
fn first_match_paints_earliest() {
    let iv = [(25, 25), (0, 65535), (20, 30)];
    assert_eq!(first_match_intervals(&iv), vec![(0, 24, 1), (25, 25, 0), (26, 65535, 1)]);
    let iv = [(100, 200), (150, 300)];
    assert_eq!(first_match_intervals(&iv), vec![(100, 200, 0), (201, 300, 1)]);
    assert_eq!(first_match_intervals(&[]), vec![]);
}

#[test]
fn shared_rule_lists_are_interned() {
    let rs = crate::rules::parse(
        "r.toml",
        "default_policy = \"allow\"\n[[rule]]\ndst = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\nprotocol = \"udp\"\nports = \"53\"\n",
    )
    .unwrap();
    let c = compile(&rs).unwrap();
    assert_eq!(c.dst_v4.len(), 2);
    assert_eq!(c.dst_v4[0].1, c.dst_v4[1].1);
    assert!(c.dst_v6.is_empty() && c.pair_v4.is_empty());
    // One own rule: checked in place, no list at all.
    assert_eq!(c.dst_v4[0].1.lists.own, INLINE_LIST);
    let inline = c.dst_v4[0].1.lists.inline;
    assert_eq!((inline.rule, inline.classes, inline.lo, inline.hi, inline.l4_any), (1, 1 << PCLASS_UDP, 53, 53, 0));
    assert!(c.list_slots.is_empty() && c.ranges.is_empty());
}

#[test]
fn source_specific_rules_get_pair_entries() {
    let rs = crate::rules::parse(
        "r.toml",
        "default_policy = \"deny\"\n[[rule]]\nsrc = \"192.0.2.0/25\"\ndst = \"198.51.100.0/24\"\n[[rule]]\ndst = \"198.51.100.0/24\"\nprotocol = \"tcp\"\n",
    )
    .unwrap();
    let c = compile(&rs).unwrap();
    assert_eq!(c.dst_v4.len(), 1);
    assert_eq!(c.dst_v4[0].1.flags, 0);
    // Both rules name the destination: all candidates are its own.
    assert!(c.pair_v4.iter().all(|(_, _, l)| l.inherited == NO_LIST));
    // S(d) = {192.0.2.0/25, 0.0.0.0/0}.
    assert_eq!(c.pair_v4.len(), 2);
}

#[test]
fn port_lists_become_intervals_of_one_rule() {
    let rs = crate::rules::parse(
        "r.toml",
        "default_policy = \"allow\"\n[[rule]]\ndst = \"192.0.2.0/24\"\nprotocol = \"tcp\"\nports = [80, 443, \"8000-8100\"]\n",
    )
    .unwrap();
    let c = compile(&rs).unwrap();
    // Not inline (three intervals): one list, three RANGES for tcp.
    assert_eq!(c.dst_v4.len(), 1);
    assert_ne!(c.dst_v4[0].1.lists.own, INLINE_LIST);
    let spans: Vec<(u16, u16, u32)> = c.ranges.iter().map(|r| (r.lo, r.hi, r.rule)).collect();
    assert_eq!(spans, vec![(80, 80, 1), (443, 443, 1), (8000, 8100, 1)]);
    // A later rule's interval between the list's pieces keeps its own stretch.
    let rs = crate::rules::parse(
        "r.toml",
        "default_policy = \"allow\"\n[[rule]]\nprotocol = \"tcp\"\nports = \"80,90\"\n[[rule]]\nprotocol = \"tcp\"\nports = \"70-100\"\n",
    )
    .unwrap();
    let c = compile(&rs).unwrap();
    let spans: Vec<(u16, u16, u32)> = c.ranges.iter().map(|r| (r.lo, r.hi, r.rule)).collect();
    assert_eq!(spans, vec![(70, 79, 2), (80, 80, 1), (81, 89, 2), (90, 90, 1), (91, 100, 2)]);
}

#[test]
fn each_pattern_is_a_class_of_its_rules() {
    let rs = crate::rules::parse(
        "r.toml",
        "default_policy = \"deny\"\n[dns]\nresolvers = [\"192.0.2.2\"]\n[[rule]]\nname = \"dns\"\nprotocol = \"udp\"\ndst = \"192.0.2.2\"\nports = \"53\"\n\
         [[rule]]\nname = \"no-bad\"\naction = \"deny\"\ndst_fqdn = \"bad.example\"\n\
         [[rule]]\nname = \"web\"\nprotocol = \"tcp\"\nports = \"80\"\ndst_fqdn = [\"ok.example\", \"*.cdn.example\"]\n",
    )
    .unwrap();
    let c = compile(&rs).unwrap();
    // Rules by name add no destination prefix.
    assert_eq!(c.dst_v4.len(), 1);
    let names: Vec<&str> = c.fqdn.iter().map(|f| f.pattern.as_str()).collect();
    assert_eq!(names, ["", "bad.example", "ok.example", "*.cdn.example"]);
    assert_eq!(c.fqdn[0].id, 0);
    assert_eq!((c.fqdn[1].first_rule, c.fqdn[1].first_action), (2, egress_common::ACTION_DENY));
    assert_eq!((c.fqdn[3].first_rule, c.fqdn[3].first_action), (3, egress_common::ACTION_ALLOW));
    // "web" alone, checked in place, both families.
    for v in [c.fqdn[2].class.v4, c.fqdn[2].class.v6] {
        assert_eq!(v.flags, DST_SRC_ANY);
        assert_eq!(v.lists.own, INLINE_LIST);
        assert_eq!((v.lists.inline.rule, v.lists.inline.lo, v.lists.inline.hi), (3, 80, 80));
    }
}
