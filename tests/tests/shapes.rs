//! The differential test at size: every rule-set shape of the benchmark
//! (realistic, source x destination pairs, deep nesting, port ranges, source
//! fan, a large blocklist set) and a dense IPv6 one, thousands of rules each,
//! through BPF_PROG_TEST_RUN with the flow cache off (every packet takes the
//! full lookup). Packets aim at rules: the first and last address of a rule's
//! prefix, one just outside it, one inside at random; ports at an interval's
//! ends and just past them. The kernel's verdict and per-rule counters must
//! equal the reference classifier's, packet by packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use egress::{
    compile,
    dataplane::{LoadOptions, Loaded},
    packet::{self, Shape},
    reference::{self, L4, PacketMeta},
    rules::{self, Action, Protocol, Rule, RuleSet},
    ruleset_gen,
};
use egress_common::{TC_ACT_SHOT, TC_ACT_UNSPEC};
use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// An address of `net`: its first, its last, one just outside, or one inside at random.
fn aim(rng: &mut StdRng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let (base, host) = (u32::from(n.network()), !u32::from(n.netmask()));
            let a = match rng.gen_range(0..5) {
                0 => base,
                1 => base | host,
                2 => base.wrapping_sub(1),
                3 => (base | host).wrapping_add(1),
                _ => base | (rng.r#gen::<u32>() & host),
            };
            IpAddr::V4(Ipv4Addr::from(a))
        }
        IpNet::V6(n) => {
            let (base, host) = (u128::from(n.network()), !u128::from(n.netmask()));
            let a = match rng.gen_range(0..5) {
                0 => base,
                1 => base | host,
                2 => base.wrapping_sub(1),
                3 => (base | host).wrapping_add(1),
                _ => base | (rng.r#gen::<u128>() & host),
            };
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }
}

/// A packet aimed at rule `r` (its destination, source, protocol and ports, each
/// at or near an edge).
fn packet_for(rng: &mut StdRng, r: &Rule) -> PacketMeta {
    let v6 = if r.families.v4 && r.families.v6 { rng.gen_bool(0.5) } else { r.families.v6 };
    let pick = |rng: &mut StdRng, nets: &Option<Vec<IpNet>>, fallback: &str| -> IpAddr {
        let fam: Vec<&IpNet> = nets.iter().flatten().filter(|n| matches!(n, IpNet::V6(_)) == v6).collect();
        match fam.is_empty() {
            true => {
                let any: IpNet = fallback.parse().expect("fallback net");
                aim(rng, &any)
            }
            false => {
                let k = rng.gen_range(0..fam.len());
                aim(rng, fam[k])
            }
        }
    };
    let dst = pick(rng, &r.dst, if v6 { "2001:db8::/32" } else { "10.0.0.0/8" });
    let src = pick(rng, &r.src, if v6 { "2001:db8:ffff::/48" } else { "192.0.2.0/24" });
    let proto = match r.protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Icmp | Protocol::Icmpv6 => {
            if v6 {
                58
            } else {
                1
            }
        }
        Protocol::All => [6, 17, if v6 { 58 } else { 1 }][rng.gen_range(0..3)],
    };
    let l4 = match proto {
        6 | 17 => {
            let dport = match r.ports.as_ref() {
                Some(p) => {
                    let (lo, hi) = p[rng.gen_range(0..p.len())];
                    [lo, hi, hi.wrapping_add(1), lo.wrapping_sub(1), rng.gen_range(lo..=hi)][rng.gen_range(0..5)]
                }
                None => rng.r#gen(),
            };
            L4::Ports { dport }
        }
        _ => L4::Icmp { ty: r.icmp_type.unwrap_or(8), code: r.icmp_code.unwrap_or(0) },
    };
    PacketMeta { src, dst, proto, l4 }
}

/// Dense IPv6: /128s, /120s and /64s packed into a few /48s (chunk chains and
/// buckets at every level), with ports.
fn dense_v6(n: usize) -> String {
    let mut rng = StdRng::seed_from_u64(6);
    let mut s = String::from("default_policy = \"allow\"\n");
    for i in 0..n {
        let (a, b, c) = (rng.gen_range(1..4u32), rng.gen_range(0..64u32), rng.gen_range(0..0x400u32));
        let dst = match rng.gen_range(0..4) {
            0 => format!("2001:db8:{a}::/48"),
            1 => format!("2001:db8:{a}:{b:x}::/64"),
            2 => format!("2001:db8:{a}:{b:x}::{:x}00/120", c >> 2),
            _ => format!("2001:db8:{a}:{b:x}::{c:x}/128"),
        };
        let action = if i % 3 == 0 { "allow" } else { "deny" };
        let _ = std::fmt::Write::write_fmt(
            &mut s,
            format_args!("[[rule]]\naction = \"{action}\"\ndst = \"{dst}\"\nprotocol = \"tcp\"\nports = \"{}\"\n", 1 + i % 500),
        );
    }
    s
}

fn check(name: &str, rs: &RuleSet, packets: usize, seed: u64) {
    let c = compile::compile(rs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let opts = LoadOptions { flow_cache: 0, ..LoadOptions::default() };
    let mut loaded = Loaded::with_options(&c, &opts).unwrap_or_else(|e| panic!("{name}: load: {e}"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut want = vec![0u64; rs.rules.len() + 1];
    for i in 0..packets {
        let r = &rs.rules[rng.gen_range(0..rs.rules.len())];
        let m = packet_for(&mut rng, r);
        let (slot, action) = reference::classify(rs, &m);
        let frame = packet::build(&m, &Shape::default());
        let prog = loaded.program().expect("program");
        let got = prog.test_run(TestRunOptions { data_in: Some(&frame), ..Default::default() }).expect("test run").return_value as i32;
        let expect = if action == Action::Deny { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
        assert_eq!(got, expect, "{name}: packet {i} {m:?} aimed at rule {}: reference slot {slot}", r.index);
        want[slot as usize] += 1;
    }
    let got: Vec<u64> = loaded.counters().expect("counters").iter().map(|c| c.packets).collect();
    for (slot, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{name}: rule slot {slot} counted {g} packets, the reference {w}");
    }
    eprintln!("{name}: {} rules, {packets} packets agree; {:?}", rs.rules.len(), c.entry_counts());
}

#[test]
fn every_shape_agrees_with_the_reference() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let shapes = [
        ("realistic", ruleset_gen::realistic(20_000, 100, 7)),
        ("pairs", ruleset_gen::src_dst_pairs(3_000)),
        ("nested", ruleset_gen::nested(660)),
        ("ports", ruleset_gen::port_ranges(2_000)),
        ("fan", ruleset_gen::source_fan(2_000)),
        ("dense-v6", dense_v6(6_000)),
    ];
    for (k, (name, text)) in shapes.iter().enumerate() {
        let rs = rules::parse(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &rs, 3_000, k as u64);
    }
    // A set of 50,000 /32s behind one rule, and a rule after it.
    let mut files = std::collections::HashMap::new();
    files.insert("block.txt".to_string(), ruleset_gen::blocklist(50_000).into_bytes());
    let files = egress::sets::InMemory(files);
    let text = "default_policy = \"allow\"\n[[set]]\nname = \"block\"\nfile = \"block.txt\"\n\
                [[rule]]\naction = \"deny\"\ndst = \"@block\"\n[[rule]]\naction = \"deny\"\ndst = \"10.0.0.0/8\"\nprotocol = \"udp\"\n";
    let rs = rules::parse_with("sets.toml", text, &files).expect("sets rule file");
    check("blocklist", &rs, 3_000, 9);
}
