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

/// Random rule blocks over prefixes that nest and touch (both families, some
/// source-specific, ports and port lists, ICMP), for the model tests.
mod random {
    use rand::{Rng, rngs::StdRng};

    pub use crate::ruleset_gen::{RANDOM_V4_NETS as V4, RANDOM_V6_NETS as V6};
    pub const PORTS: &[u16] = &[0, 1, 53, 54, 80, 443, 1024, 8080, 65535];

    fn pick<T: Copy>(rng: &mut StdRng, v: &[T]) -> T {
        v[rng.gen_range(0..v.len())]
    }

    pub fn block(rng: &mut StdRng, name: &str) -> String {
        let mut s = format!("[[rule]]\nname = \"{name}\"\naction = \"{}\"\n", if rng.gen_bool(0.5) { "allow" } else { "deny" });
        let fam = rng.gen_range(0..3);
        let pool = if fam == 1 { V4 } else { V6 };
        if fam != 0 {
            // Mostly destinations, sometimes a source too (a few /0s: every destination).
            let dst = if rng.gen_bool(0.9) { pick(rng, &pool[1..]) } else { pick(rng, pool) };
            s.push_str(&format!("dst = \"{dst}\"\n"));
            if rng.gen_bool(0.2) {
                s.push_str(&format!("src = \"{}\"\n", pick(rng, pool)));
            }
        }
        let proto = pick(rng, &["all", "tcp", "udp", "tcp", "udp", "icmp"]);
        let proto = if proto == "icmp" && fam == 2 { "icmpv6" } else { proto };
        let proto = if proto == "icmp" && fam == 0 { "all" } else { proto };
        s.push_str(&format!("protocol = \"{proto}\"\n"));
        if matches!(proto, "tcp" | "udp") && rng.gen_bool(0.7) {
            let (a, b) = (pick(rng, PORTS), pick(rng, PORTS));
            if rng.gen_bool(0.3) {
                s.push_str(&format!("ports = [{}, {}]\n", a, b.max(a)));
            } else {
                s.push_str(&format!("ports = \"{}-{}\"\n", a.min(b), a.max(b)));
            }
        }
        if matches!(proto, "icmp" | "icmpv6") && rng.gen_bool(0.6) {
            s.push_str(&format!("icmp_type = {}\n", pick(rng, &[0u8, 3, 8, 128])));
        }
        s
    }
}

fn packets(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<crate::reference::PacketMeta> {
    use crate::reference::{L4, PacketMeta};
    use rand::Rng;
    let hosts4 =
        ["192.0.2.0", "192.0.2.7", "192.0.2.9", "192.0.2.64", "192.0.2.130", "198.51.100.1", "198.51.101.9", "203.0.113.129", "10.0.0.1"];
    let hosts6 = ["2001:db8:1::7", "2001:db8:1::8", "2001:db8:1:1::1", "2001:db8:2::1", "2001:db8:3::1", "fd00::1"];
    (0..n)
        .map(|_| {
            let v6 = rng.gen_bool(0.5);
            let pool: &[&str] = if v6 { &hosts6 } else { &hosts4 };
            let src = pool[rng.gen_range(0..pool.len())].parse().unwrap();
            let dst = pool[rng.gen_range(0..pool.len())].parse().unwrap();
            let proto = [6u8, 17, if v6 { 58 } else { 1 }, 47][rng.gen_range(0..4)];
            let l4 = match proto {
                6 | 17 => L4::Ports { dport: random::PORTS[rng.gen_range(0..random::PORTS.len())] },
                1 | 58 => L4::Icmp { ty: [0u8, 3, 8, 128][rng.gen_range(0..4)], code: 0 },
                _ => L4::None,
            };
            PacketMeta { src, dst, proto, l4 }
        })
        .collect()
}

fn agree(c: &Compiled, rs: &RuleSet, pkts: &[crate::reference::PacketMeta], what: &str) {
    for p in pkts {
        let want = crate::reference::classify(rs, p).0;
        assert_eq!(model::classify(c, p), want, "{what}: {p:?}");
    }
}

#[test]
fn the_model_of_the_lookup_agrees_with_the_reference() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(5);
    for set in 0..60 {
        let n = rng.gen_range(1..40);
        let text: String = (0..n).map(|i| random::block(&mut rng, &format!("r{i}"))).collect();
        let rs = crate::rules::parse("r.toml", &format!("default_policy = \"deny\"\n{text}")).unwrap();
        let c = compile(&rs).unwrap();
        agree(&c, &rs, &packets(&mut rng, 400), &format!("set {set}"));
    }
}

/// Random edits (insert, remove, change, a few at once), each recompiled
/// from the last recompile, held to the reference after every step.
#[test]
fn recompiles_after_edits_agree_with_the_reference() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(9);
    let (mut took, mut whole) = (0, 0);
    for set in 0..12 {
        let mut blocks: Vec<String> = (0..rng.gen_range(5..60)).map(|i| random::block(&mut rng, &format!("r{set}-{i}"))).collect();
        let text = |b: &[String]| format!("default_policy = \"allow\"\n{}", b.concat());
        let mut rs = crate::rules::parse("r.toml", &text(&blocks)).unwrap();
        let mut c = compile(&rs).unwrap();
        for step in 0..40 {
            let at = rng.gen_range(0..=blocks.len());
            let (gone, put) = match rng.gen_range(0..4) {
                0 => (0, 1),
                1 if at < blocks.len() => (1, 0),
                _ if at < blocks.len() => (1, rng.gen_range(1..3)),
                _ => (0, 1),
            };
            let fresh: Vec<String> = (0..put).map(|k| random::block(&mut rng, &format!("e{set}-{step}-{k}"))).collect();
            blocks.splice(at..at + gone, fresh);
            let next = crate::rules::parse("r.toml", &text(&blocks)).unwrap();
            let edit = incremental::Edit { at, removed: &rs.rules[at..at + gone], added: put };
            let what = format!("set {set} step {step}");
            c = match incremental::recompile(c, &next, &edit) {
                Some((r, _)) => {
                    took += 1;
                    r
                }
                None => {
                    whole += 1;
                    compile(&next).unwrap()
                }
            };
            agree(&c, &next, &packets(&mut rng, 300), &what);
            rs = next;
        }
    }
    assert!(took > 200, "most edits take the recompile: {took} of {}", took + whole);
}

/// The realistic shape (nested broad rules, source-specific rules, port
/// ranges, both families) at 3,000 rules: random edits of its own kind of
/// rule, each recompiled from the last, held to the reference on packets
/// aimed at the edited rules' destinations and ports.
#[test]
fn recompiles_of_the_realistic_shape_agree_with_the_reference() {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use crate::reference::{L4, PacketMeta};
    let text = crate::ruleset_gen::realistic(3000, 50, 3);
    let first = text.find("[[rule]]").unwrap();
    let (pre, body) = text.split_at(first);
    let mut blocks: Vec<String> = body.split("[[rule]]").filter(|b| !b.is_empty()).map(|b| format!("[[rule]]{b}")).collect();
    let mut rng = StdRng::seed_from_u64(21);
    let mut rs = crate::rules::parse("r.toml", &format!("{pre}{}", blocks.concat())).unwrap();
    let mut c = compile(&rs).unwrap();
    let mut took = 0;
    for step in 0..60 {
        let at = rng.gen_range(0..blocks.len());
        // Another rule of the set, renamed: the same kind of destination and ports.
        let donor = blocks[rng.gen_range(0..blocks.len())].clone();
        let fresh = donor.replacen("name = \"", &format!("name = \"e{step}-"), 1);
        let (gone, put) = match step % 3 {
            0 => (0, vec![fresh]),
            1 => (1, vec![]),
            _ => (1, vec![fresh]),
        };
        blocks.splice(at..at + gone, put.clone());
        let next = crate::rules::parse("r.toml", &format!("{pre}{}", blocks.concat())).unwrap();
        let edit = incremental::Edit { at, removed: &rs.rules[at..at + gone], added: put.len() };
        c = match incremental::recompile(c, &next, &edit) {
            Some((r, _)) => {
                took += 1;
                r
            }
            None => compile(&next).unwrap(),
        };
        // Packets to every destination of the rules taken out and put in.
        let touched: Vec<&crate::rules::Rule> = next.rules[at..at + put.len()].iter().chain(rs.rules[at..at + gone].iter()).collect();
        let mut pkts = packets(&mut rng, 100);
        for r in touched {
            for net in r.dst.iter().flatten() {
                for _ in 0..20 {
                    let dst = match net {
                        ipnet::IpNet::V4(n) => {
                            let span = (1u64 << (32 - n.prefix_len())) as u32;
                            std::net::IpAddr::V4((u32::from(n.network()) + rng.gen_range(0..span.max(1))).into())
                        }
                        ipnet::IpNet::V6(n) => {
                            let bits = 128 - n.prefix_len() as u32;
                            let off: u128 = if bits == 0 { 0 } else { rng.r#gen::<u128>() >> (128 - bits) };
                            std::net::IpAddr::V6((u128::from(n.network()) + off).into())
                        }
                    };
                    // Inside the source-specific rules' sources, or not.
                    let src = match (dst.is_ipv6(), rng.gen_bool(0.5)) {
                        (true, true) => "2001:db8:ffff::1",
                        (true, false) => "2001:db8:eeee::1",
                        (false, true) => "192.0.2.9",
                        (false, false) => "198.51.100.7",
                    };
                    let src = src.parse().unwrap();
                    let dport = r.ports.as_ref().map_or(rng.r#gen(), |p| p[0].0);
                    let proto = [6u8, 17][rng.gen_range(0..2)];
                    pkts.push(PacketMeta { src, dst, proto, l4: L4::Ports { dport } });
                }
            }
        }
        agree(&c, &next, &pkts, &format!("step {step}"));
        rs = next;
    }
    assert!(took > 50, "most edits recompiled: {took} of 60");
}

/// An edit of a rule with many destination prefixes (a large set) compiles
/// whole: checking every rule against each of its prefixes would cost more.
#[test]
fn an_edit_of_a_rule_with_many_destinations_compiles_whole() {
    let nets: Vec<String> = (0..300).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
    let base = "default_policy = \"allow\"\n[[rule]]\nname = \"a\"\ndst = \"192.0.2.0/24\"\nprotocol = \"tcp\"\n";
    let big = format!("[[rule]]\nname = \"big\"\naction = \"deny\"\ndst = [{}]\nprotocol = \"udp\"\n", nets.join(", "));
    let small = "[[rule]]\nname = \"small\"\naction = \"deny\"\ndst = \"198.51.100.0/24\"\nprotocol = \"udp\"\n";
    let before = crate::rules::parse("r.toml", base).unwrap();
    let c = compile(&before).unwrap();
    for (add, whole) in [(big.as_str(), true), (small, false)] {
        let after = crate::rules::parse("r.toml", &format!("{base}{add}")).unwrap();
        let edit = incremental::Edit { at: 1, removed: &[], added: 1 };
        assert_eq!(incremental::recompile(c.clone(), &after, &edit).is_none(), whole, "{}", &add[..30]);
    }
}
