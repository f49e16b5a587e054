//! The kernel program through BPF_PROG_TEST_RUN (root, nothing attached):
//! hand-written parsing fixtures, and the differential test against the
//! reference classifier on seeded random rule sets and packets.

use std::net::IpAddr;

use aya::programs::{TestRun as _, TestRunOptions};
use egress::{
    compile,
    dataplane::{LoadOptions, Loaded},
    packet::{self, Shape},
    reference::{self, L4, PacketMeta},
    rules::{self, Action, RuleSet},
};
use egress_common::{
    ACTION_ALLOW, ACTION_DENY, FlowEntryV4, FlowKeyV4, FlowValue, PCLASS_UDP, STAT_BAD_HEADER, STAT_FRAGMENTS, STAT_NON_IP,
    STAT_TOO_MANY_HDRS, STAT_TRUNCATED, TC_ACT_SHOT, TC_ACT_UNSPEC, flow_seal, flow_slot,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

struct Prog {
    loaded: Loaded,
}

impl Prog {
    fn new(rs: &RuleSet) -> Prog {
        let c = compile::compile(rs).expect("compile");
        // A small flow cache: these tests load hundreds of rule sets, and the LRU
        // maps are preallocated.
        let opts = LoadOptions { flow_cache: TEST_SLOTS, ..LoadOptions::default() };
        // The flow cache's door is per CPU: a flow is cached at its second
        // packet on the same CPU.
        egress_tests::stay_on_this_cpu();
        Prog { loaded: Loaded::with_options(&c, &opts).expect("load") }
    }
    fn run(&mut self, frame: &[u8]) -> i32 {
        let prog = self.loaded.program().expect("program");
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        match prog.test_run(opts) {
            Ok(r) => r.return_value as i32,
            Err(e) => panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e:?}", frame.len()),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn meta(src: &str, dst: &str, proto: u8, l4: L4) -> PacketMeta {
    PacketMeta { src: ip(src), dst: ip(dst), proto, l4 }
}

const FIXTURE_RULES: &str = r#"
default_policy = "allow"
[[rule]]
name = "deny-dns"
action = "deny"
dst = "198.51.100.0/24"
protocol = "udp"
ports = "53"
[[rule]]
name = "deny-tcp-203"
action = "deny"
dst = "203.0.113.0/24"
protocol = "tcp"
[[rule]]
name = "deny-echo"
action = "deny"
protocol = "icmp"
icmp_type = 8
[[rule]]
name = "deny-v6-udp"
action = "deny"
dst = "2001:db8:2::/48"
protocol = "udp"
ports = "1000-2000"
[[rule]]
name = "deny-v6-all"
action = "deny"
dst = "2001:db8:3::/48"
"#;

/// (name, frame, expected return, expected counter slot or None, expected STATS slot bumped or None)
type Fixture = (&'static str, Vec<u8>, i32, Option<u32>, Option<u32>);

fn fixtures() -> Vec<Fixture> {
    let udp53 = meta("192.0.2.1", "198.51.100.7", 17, L4::Ports { dport: 53 });
    let udp54 = meta("192.0.2.1", "198.51.100.7", 17, L4::Ports { dport: 54 });
    let tcp203 = meta("192.0.2.1", "203.0.113.5", 6, L4::Ports { dport: 443 });
    let v6udp = meta("2001:db8:1::1", "2001:db8:2::1", 17, L4::Ports { dport: 1500 });
    let v6all = meta("2001:db8:1::1", "2001:db8:3::1", 17, L4::Ports { dport: 9 });
    let d = Shape::default;
    let mut v = vec![
        ("arp", packet::arp(), TC_ACT_UNSPEC, None, Some(STAT_NON_IP)),
        ("udp/53 denied", packet::build(&udp53, &d()), TC_ACT_SHOT, Some(1), None),
        ("udp/54 default", packet::build(&udp54, &d()), TC_ACT_UNSPEC, Some(0), None),
        ("ipv4 options skipped", packet::build(&udp53, &Shape { ipv4_option_words: 10, ..d() }), TC_ACT_SHOT, Some(1), None),
        ("first fragment has ports", packet::build(&udp53, &Shape { more_fragments: true, ..d() }), TC_ACT_SHOT, Some(1), None),
        (
            "non-first fragment: no ports, no match",
            packet::build(&udp53, &Shape { frag_offset: 100, ..d() }),
            TC_ACT_UNSPEC,
            Some(0),
            Some(STAT_FRAGMENTS),
        ),
        (
            "non-first fragment matches port-less tcp rule",
            packet::build(&tcp203, &Shape { frag_offset: 7, ..d() }),
            TC_ACT_SHOT,
            Some(2),
            Some(STAT_FRAGMENTS),
        ),
        ("one vlan tag", packet::build(&udp53, &Shape { vlan_tags: 1, ..d() }), TC_ACT_SHOT, Some(1), None),
        ("two vlan tags", packet::build(&udp53, &Shape { vlan_tags: 2, ..d() }), TC_ACT_SHOT, Some(1), None),
        ("three vlan tags", packet::build(&udp53, &Shape { vlan_tags: 3, ..d() }), TC_ACT_SHOT, None, Some(STAT_TOO_MANY_HDRS)),
        ("icmp echo", packet::build(&meta("192.0.2.1", "192.0.2.2", 1, L4::Icmp { ty: 8, code: 0 }), &d()), TC_ACT_SHOT, Some(3), None),
        (
            "icmp echo reply",
            packet::build(&meta("192.0.2.1", "192.0.2.2", 1, L4::Icmp { ty: 0, code: 0 }), &d()),
            TC_ACT_UNSPEC,
            Some(0),
            None,
        ),
        ("ipv6 udp", packet::build(&v6udp, &d()), TC_ACT_SHOT, Some(4), None),
        ("ipv6 ext headers", packet::build(&v6udp, &Shape { ipv6_ext: vec![0, 60, 43, 60], ..d() }), TC_ACT_SHOT, Some(4), None),
        ("ipv6 first fragment", packet::build(&v6udp, &Shape { more_fragments: true, ..d() }), TC_ACT_SHOT, Some(4), None),
        (
            "ipv6 non-first fragment: no ports",
            packet::build(&v6udp, &Shape { frag_offset: 3, ..d() }),
            TC_ACT_UNSPEC,
            Some(0),
            Some(STAT_FRAGMENTS),
        ),
        (
            "ipv6 non-first fragment, protocol all",
            packet::build(&v6all, &Shape { frag_offset: 3, ..d() }),
            TC_ACT_SHOT,
            Some(5),
            Some(STAT_FRAGMENTS),
        ),
        ("ipv6 8 ext headers", packet::build(&v6udp, &Shape { ipv6_ext: vec![60; 8], ..d() }), TC_ACT_SHOT, Some(4), None),
        ("ipv6 9 ext headers", packet::build(&v6udp, &Shape { ipv6_ext: vec![60; 9], ..d() }), TC_ACT_SHOT, None, Some(STAT_TOO_MANY_HDRS)),
    ];
    let mut bad_ihl = packet::build(&udp53, &d());
    bad_ihl[14] = 0x44;
    v.push(("ipv4 ihl 4", bad_ihl, TC_ACT_SHOT, None, Some(STAT_BAD_HEADER)));
    let mut bad_ver = packet::build(&v6udp, &d());
    bad_ver[14] = 0x40;
    v.push(("ipv6 ethertype, version 4", bad_ver, TC_ACT_SHOT, None, Some(STAT_BAD_HEADER)));
    let mut lldp = packet::arp();
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    v.push(("lldp", lldp, TC_ACT_UNSPEC, None, Some(STAT_NON_IP)));
    v
}

/// The reference parser's and classifier's TC verdict on a frame.
fn reference_verdict(rs: &RuleSet, frame: &[u8]) -> i32 {
    if reference::frame_passes(rs, frame, true) { TC_ACT_UNSPEC } else { TC_ACT_SHOT }
}

#[test]
fn parsing_fixtures() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let rs = rules::parse("fixtures.toml", FIXTURE_RULES).unwrap();
    let mut prog = Prog::new(&rs);
    for (name, frame, ret, slot, stat) in fixtures() {
        let c0 = prog.loaded.counters().unwrap();
        let s0 = prog.loaded.stats().unwrap();
        let got = prog.run(&frame);
        assert_eq!(got, ret, "{name}: verdict");
        assert_eq!(reference_verdict(&rs, &frame), ret, "{name}: the reference parser ({:?})", reference::parse_frame(&frame, true));
        let c1 = prog.loaded.counters().unwrap();
        let s1 = prog.loaded.stats().unwrap();
        for (i, (a, b)) in c0.iter().zip(&c1).enumerate() {
            if Some(i as u32) == slot {
                assert_eq!((b.packets - a.packets, b.bytes - a.bytes), (1, frame.len() as u64), "{name}: counter slot {i}");
            } else {
                assert_eq!(a, b, "{name}: counter slot {i} must not move");
            }
        }
        for (i, (a, b)) in s0.iter().zip(&s1).enumerate() {
            let want = if Some(i as u32) == stat { 1 } else { 0 };
            assert_eq!(b - a, want, "{name}: STATS slot {i}");
        }
    }
}

#[test]
fn truncation_at_every_header_boundary() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let rs = rules::parse("fixtures.toml", FIXTURE_RULES).unwrap();
    let mut prog = Prog::new(&rs);
    let cases = [
        // (packet, shape, bytes up to the end of the last header the program reads)
        (meta("192.0.2.1", "198.51.100.7", 17, L4::Ports { dport: 53 }), Shape::default(), 14 + 20 + 4),
        (meta("192.0.2.1", "198.51.100.7", 17, L4::Ports { dport: 53 }), Shape { ipv4_option_words: 3, ..Shape::default() }, 14 + 32 + 4),
        (meta("192.0.2.1", "192.0.2.2", 1, L4::Icmp { ty: 8, code: 0 }), Shape::default(), 14 + 20 + 2),
        (meta("2001:db8:1::1", "2001:db8:2::1", 17, L4::Ports { dport: 1500 }), Shape::default(), 14 + 40 + 4),
        (
            meta("2001:db8:1::1", "2001:db8:2::1", 17, L4::Ports { dport: 1500 }),
            Shape { ipv6_ext: vec![0, 44], ..Shape::default() },
            14 + 40 + 16 + 8 + 4,
        ),
        (
            meta("2001:db8:1::1", "2001:db8:2::1", 58, L4::Icmp { ty: 128, code: 0 }),
            Shape { ipv6_ext: vec![60], ..Shape::default() },
            14 + 40 + 16 + 2,
        ),
    ];
    for (m, shape, need) in cases {
        let full = packet::build(&m, &shape);
        let (_, action) = reference::classify(&rs, &m);
        let want_full = if action == Action::Deny { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
        // BPF_PROG_TEST_RUN refuses (EINVAL) frames shorter than Ethernet + the fixed IP
        // header of their EtherType, so truncation is tested from there on; the
        // program itself treats any short read as truncation.
        let min = 14 + if m.dst.is_ipv6() { 40 } else { 20 };
        for len in min..=full.len() {
            let frame = &full[..len];
            let got = prog.run(frame);
            assert_eq!(reference_verdict(&rs, frame), got, "{m:?} cut to {len} bytes: the reference parser");
            if len < need {
                assert_eq!(got, TC_ACT_SHOT, "{m:?} cut to {len} bytes (< {need}) must be dropped as truncated");
            } else {
                assert_eq!(got, want_full, "{m:?} cut to {len} bytes (>= {need}) is classified");
            }
        }
    }
    let st = prog.loaded.stats().unwrap();
    assert!(st[STAT_TRUNCATED as usize] > 0);
}

// ---------------------------------------------------------------------------
// Differential test
// ---------------------------------------------------------------------------

#[test]
fn kernel_agrees_with_reference_on_random_rule_sets() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let sets: u64 = std::env::var("EGRESS_DIFF_SETS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let seed0: u64 = std::env::var("EGRESS_DIFF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    let mut packets = 0;
    for set in 0..sets {
        let seed = seed0 + set;
        let mut rng = StdRng::seed_from_u64(seed);
        let n = *[1usize, 2, 4, 8, 16, 40].choose(&mut rng).unwrap();
        // Every third set also names address sets (@s0, @s1).
        let (text, files) = if set % 3 == 2 {
            egress_tests::random::rules_with_sets(&mut rng, n)
        } else {
            (egress_tests::random::rules(&mut rng, n), Default::default())
        };
        let rs = rules::parse_with("random.toml", &text, &files)
            .unwrap_or_else(|e| panic!("seed {seed}: generator made an invalid file: {e}\n{text}"));
        let mut prog = Prog::new(&rs);
        let mut want = vec![(0u64, 0u64); rs.rules.len() + 1];
        for i in 0..50 {
            let (m, shape) = egress_tests::random::packet(&mut rng);
            let frame = packet::build(&m, &shape);
            let (slot, action) = reference::classify(&rs, &m);
            let expect = if action == Action::Deny { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
            // Three times: the first run takes the full lookup and leaves the
            // flow cache alone (its door), the second caches the verdict, the
            // third hits the cache.
            for pass in ["full lookup, first packet", "full lookup, cached", "flow cache hit"] {
                let got = prog.run(&frame);
                assert_eq!(
                    got, expect,
                    "seed {seed} packet {i} ({pass}): kernel and reference disagree on {m:?} {shape:?} (reference: rule slot {slot})\nrules:\n{text}"
                );
                want[slot as usize].0 += 1;
                want[slot as usize].1 += frame.len() as u64;
                packets += 1;
            }
        }
        let got: Vec<(u64, u64)> = prog.loaded.counters().unwrap().iter().map(|c| (c.packets, c.bytes)).collect();
        assert_eq!(got, want, "seed {seed}: per-rule counters differ from the reference\nrules:\n{text}");
    }
    eprintln!("differential: {sets} rule sets, {packets} packets, all agree");
}

/// The flow-cache slots the test programs have (`Prog::new` loads 1024 a family).
const TEST_SLOTS: u32 = 1024;

fn flow_v4(prog: &mut Prog) -> aya::maps::Array<&mut aya::maps::MapData, FlowEntryV4> {
    let m = prog.loaded.ebpf.map_mut(egress_common::MAP_FLOW_V4).expect("FLOW_V4");
    aya::maps::Array::try_from(m).expect("FLOW_V4 is an array")
}

fn slot_of(k: &FlowKeyV4) -> u32 {
    flow_slot(&k.src, &k.dst, k.pclass, k.port) & (TEST_SLOTS - 1)
}

fn udp_key(dst: [u8; 4], port: u16) -> FlowKeyV4 {
    FlowKeyV4 { src: [192, 0, 2, 1], dst, pclass: PCLASS_UDP, _pad: 0, port: port.to_be_bytes() }
}

fn sealed(key: &FlowKeyV4, rule: u32, action: u32, generation: u32) -> FlowEntryV4 {
    let seal = flow_seal(&key.src, &key.dst, key.pclass, key.port, rule, action, generation);
    FlowEntryV4 { key: *key, value: FlowValue { rule, action, generation, seal }, deadline: 0 }
}

/// The cache's slots that are not empty.
fn used_slots(prog: &mut Prog) -> Vec<(u32, FlowEntryV4)> {
    let map = flow_v4(prog);
    (0..TEST_SLOTS).map(|i| (i, map.get(&i, 0).expect("read FLOW_V4"))).filter(|(_, e)| *e != FlowEntryV4::default()).collect()
}

/// The door remembers a flow for a generation of first packets on its CPU
/// (DOOR_GENERATION), and forgets it two generations on.
#[test]
fn the_flow_cache_door_remembers_a_generation_then_forgets() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let rs = rules::parse("fixtures.toml", FIXTURE_RULES).unwrap();
    let frame = packet::build(&meta("192.0.2.1", "198.51.100.7", 17, L4::Ports { dport: 53 }), &Shape::default());
    let key = udp_key([198, 51, 100, 7], 53);
    let at = slot_of(&key);
    let mut prog = Prog::new(&rs);
    // New flows (default allow), none of them sharing the flow's cache slot.
    let mut others = (0u32..).map(|k| ([203, 0, 113, (k % 250 + 1) as u8], 1000 + (k / 250) as u16)).filter(|&(src, port)| {
        slot_of(&FlowKeyV4 { src, dst: [198, 51, 100, 9], pclass: PCLASS_UDP, _pad: 0, port: port.to_be_bytes() }) != at
    });
    let mut first_packets = |prog: &mut Prog, n: u32| {
        for _ in 0..n {
            let (src, port) = others.next().expect("another flow");
            let m = meta(&std::net::Ipv4Addr::from(src).to_string(), "198.51.100.9", 17, L4::Ports { dport: port });
            assert_eq!(prog.run(&packet::build(&m, &Shape::default())), TC_ACT_UNSPEC);
        }
    };
    assert_eq!(prog.run(&frame), TC_ACT_SHOT);
    first_packets(&mut prog, egress_common::DOOR_GENERATION - 1);
    assert_eq!(prog.run(&frame), TC_ACT_SHOT);
    assert_eq!(flow_v4(&mut prog).get(&at, 0).unwrap(), sealed(&key, 1, ACTION_DENY, 1), "remembered: its second packet is cached");
    // A planted verdict shows whether the cache is asked.
    flow_v4(&mut prog).set(at, sealed(&key, 2, ACTION_ALLOW, 1), 0).unwrap();
    assert_eq!(prog.run(&frame), TC_ACT_UNSPEC, "the door lets the flow in: the cache answers");
    first_packets(&mut prog, 2 * egress_common::DOOR_GENERATION);
    assert_eq!(prog.run(&frame), TC_ACT_SHOT, "forgotten: the full lookup answers, the cache is not asked");
    assert_eq!(flow_v4(&mut prog).get(&at, 0).unwrap(), sealed(&key, 2, ACTION_ALLOW, 1), "and not written");
    assert_eq!(prog.run(&frame), TC_ACT_UNSPEC, "marked again: the next packet asks the cache");
}

/// The stateful body has the door too: a denied flow (which the connection
/// table does not take) is cached from its second packet.
#[test]
fn the_stateful_body_caches_a_flow_from_its_second_packet() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    // The connection table is pinned, as `egress apply` pins it; removed on drop.
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let pins = Pins(std::path::PathBuf::from(format!("/sys/fs/bpf/egress-test-door-{}", std::process::id())));
    let rs = rules::parse("fixtures.toml", FIXTURE_RULES).unwrap();
    let c = compile::compile(&rs).unwrap();
    let opts =
        LoadOptions { flow_cache: TEST_SLOTS, state: Some((rules::StateConfig::default(), pins.0.clone())), ..LoadOptions::default() };
    egress_tests::stay_on_this_cpu();
    let mut prog = Prog { loaded: Loaded::with_options(&c, &opts).expect("load stateful") };
    let frame = packet::build(&meta("192.0.2.1", "198.51.100.7", 17, L4::Ports { dport: 53 }), &Shape::default());
    let key = udp_key([198, 51, 100, 7], 53);
    let at = slot_of(&key);
    assert_eq!(prog.run(&frame), TC_ACT_SHOT, "deny-dns, first packet");
    assert_eq!(used_slots(&mut prog), vec![], "a flow's first packet is not cached");
    assert_eq!(prog.run(&frame), TC_ACT_SHOT, "deny-dns, second packet");
    assert_eq!(used_slots(&mut prog), vec![(at, sealed(&key, 1, ACTION_DENY, 1))], "cached at its second packet");
    flow_v4(&mut prog).set(at, sealed(&key, 2, ACTION_ALLOW, 1), 0).unwrap();
    assert_eq!(prog.run(&frame), TC_ACT_UNSPEC, "the cache answers the third");
}

/// The flow verdict cache is consulted, its hits count for the cached rule, and a
/// slot whose seal or generation does not match is ignored (and rewritten).
#[test]
fn flow_cache_hits_count_and_bad_entries_are_ignored() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let rs = rules::parse("fixtures.toml", FIXTURE_RULES).unwrap();
    let c = compile::compile(&rs).unwrap();
    let frame = packet::build(&meta("192.0.2.1", "198.51.100.7", 17, L4::Ports { dport: 53 }), &Shape::default());
    let key = udp_key([198, 51, 100, 7], 53);
    let at = slot_of(&key);

    let mut prog = Prog::new(&rs);
    // The door: a flow's first packet leaves the cache alone, its second is cached.
    assert_eq!(prog.run(&frame), TC_ACT_SHOT, "deny-dns, first packet");
    assert_eq!(used_slots(&mut prog), vec![], "a flow's first packet is not cached");
    assert_eq!(prog.run(&frame), TC_ACT_SHOT, "deny-dns, second packet");
    assert_eq!(
        used_slots(&mut prog),
        vec![(at, sealed(&key, 1, ACTION_DENY, 1))],
        "one slot, at the shared hash, sealed as user space computes it"
    );
    let slot = |prog: &Prog, i: usize| prog.loaded.counters().unwrap()[i].packets;

    // A well-sealed entry is believed: the packet gets the cached verdict and counts
    // for the cached rule (proof that hits come from the cache, not the tries).
    flow_v4(&mut prog).set(at, sealed(&key, 2, ACTION_ALLOW, 1), 0).unwrap();
    let (s1, s2) = (slot(&prog, 1), slot(&prog, 2));
    assert_eq!(prog.run(&frame), TC_ACT_UNSPEC, "cached allow");
    assert_eq!((slot(&prog, 1) - s1, slot(&prog, 2) - s2), (0, 1), "the hit counts for the cached rule");

    // A bad seal, another generation or another key in the slot: ignored, full
    // lookup, slot rewritten.
    let mut bad_seal = sealed(&key, 2, ACTION_ALLOW, 1);
    bad_seal.value.seal ^= 1;
    let mut other_key = sealed(&key, 2, ACTION_ALLOW, 1);
    other_key.key.dst[3] ^= 1;
    for (what, v) in [("bad seal", bad_seal), ("other generation", sealed(&key, 2, ACTION_ALLOW, 7)), ("other key", other_key)] {
        flow_v4(&mut prog).set(at, v, 0).unwrap();
        let s1 = slot(&prog, 1);
        assert_eq!(prog.run(&frame), TC_ACT_SHOT, "{what}: full lookup");
        assert_eq!(slot(&prog, 1) - s1, 1, "{what}: counted for deny-dns");
        assert_eq!(flow_v4(&mut prog).get(&at, 0).unwrap(), sealed(&key, 1, ACTION_DENY, 1), "{what}: rewritten");
    }

    // Two flows sharing a slot take turns in it, each keeping its own verdict.
    let (dst, port) = (1u8..=254)
        .flat_map(|d| (1u16..2000).map(move |p| (d, p)))
        .find(|&(d, p)| p != 53 && slot_of(&udp_key([198, 51, 100, d], p)) == at)
        .expect("a colliding flow");
    let other = packet::build(&meta("192.0.2.1", &format!("198.51.100.{dst}"), 17, L4::Ports { dport: port }), &Shape::default());
    for round in 0..3 {
        assert_eq!(prog.run(&other), TC_ACT_UNSPEC, "round {round}: colliding flow, default allow");
        assert_eq!(prog.run(&frame), TC_ACT_SHOT, "round {round}: deny-dns after its slot was taken");
    }

    // --flow-cache 0: same verdicts, nothing cached.
    let opts = LoadOptions { flow_cache: 0, ..LoadOptions::default() };
    let mut off = Prog { loaded: Loaded::with_options(&c, &opts).unwrap() };
    for _ in 0..2 {
        assert_eq!(off.run(&frame), TC_ACT_SHOT);
    }
    let map = flow_v4(&mut off);
    assert!(map.iter().all(|e| e.expect("read") == FlowEntryV4::default()), "cache off: nothing written");
    assert_eq!(slot(&off, 1), 2);
}

#[test]
fn every_map_named_in_common_exists_in_the_object() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let rs = rules::parse("r.toml", "default_policy = \"allow\"\n").unwrap();
    let prog = Prog::new(&rs);
    let names: Vec<&str> = prog.loaded.ebpf.maps().map(|(n, _)| n).collect();
    for m in egress_common::ALL_MAPS.iter().chain(egress_common::CONN_MAPS.iter()) {
        assert!(names.contains(m), "map {m} missing from the object: {names:?}");
        assert!(m.len() <= 15, "map name {m} longer than the kernel's 15 bytes");
    }
}

/// 100,000 rules: compiles, loads, and still agrees with the reference. Timings are
/// printed for information only (benchmarks live in `cargo xtask bench`).
#[test]
fn hundred_thousand_rules() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let text = egress::ruleset_gen::realistic(100_000, 4096, 100_000);
    let mut rng = StdRng::seed_from_u64(100_000);
    let t = std::time::Instant::now();
    let rs = rules::parse("big.toml", &text).unwrap();
    let parse = t.elapsed();
    let t = std::time::Instant::now();
    let c = compile::compile(&rs).unwrap();
    let comp = t.elapsed();
    let t = std::time::Instant::now();
    let mut prog = Prog { loaded: Loaded::new(&c, true).unwrap() };
    let load = t.elapsed();
    eprintln!("100k rules: parse {parse:?}, compile {comp:?}, load {load:?}; entries {:?}", c.entry_counts());
    for i in 0..3000 {
        let r = &rs.rules[rng.gen_range(0..rs.rules.len())];
        let net = r.dst.as_ref().unwrap()[0];
        let v6 = net.addr().is_ipv6();
        let dst = net.network();
        let src = if rng.gen_bool(0.5) {
            if v6 { ip("2001:db8:ffff::1") } else { ip("192.0.2.9") }
        } else if v6 {
            ip("2001:db8:1::1")
        } else {
            ip("198.51.100.1")
        };
        let (proto, l4) = match r.ports.as_ref().map(|p| p[0]) {
            Some((a, b)) => (
                if r.protocol == rules::Protocol::Tcp { 6 } else { 17 },
                L4::Ports { dport: if rng.gen_bool(0.5) { a } else { b.wrapping_add(1) } },
            ),
            None => (if v6 { 58 } else { 1 }, L4::Icmp { ty: 8, code: 0 }),
        };
        let m = PacketMeta { src, dst, proto, l4 };
        let (slot, action) = reference::classify(&rs, &m);
        let got = prog.run(&packet::build(&m, &Shape::default()));
        let want = if action == Action::Deny { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
        assert_eq!(got, want, "packet {i} {m:?}: reference slot {slot}");
    }
}
