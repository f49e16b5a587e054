//! The flow cache with rules by name, through BPF_PROG_TEST_RUN (root, nothing
//! attached): a verdict that depends on learned names is cached, and goes
//! stale exactly when it must: when its learned bucket changes (a new pair)
//! and when what it relied on expires. User space plays the companion here and
//! writes the learned table itself, so each step is exact.

use aya::{
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use egress::{
    compile,
    dataplane::{DnsLoad, LoadOptions, Loaded},
    packet::{self, Shape},
    reference::{L4, PacketMeta},
    rules,
};
use egress_common::{
    FLOW_DEADLINE_SHIFT, FLOW_LEARNED, FlowEntryV4, LearnBucket, LearnWay, MAP_DNS_LEARN_V4, MAP_FLOW_V4, TC_ACT_SHOT, TC_ACT_UNSPEC,
    learn_bucket, learn_seal,
};

const RULES: &str = r#"default_policy = "deny"
[dns]
resolvers = ["192.0.2.53"]

[[rule]]
name = "no-b"
action = "deny"
dst_fqdn = "b.example"

[[rule]]
name = "web"
action = "allow"
protocol = "tcp"
ports = "443"
dst_fqdn = "a.example"
"#;

const ADDR: [u8; 4] = [198, 51, 100, 9];

fn mono_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain clock read into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Case {
    loaded: Loaded,
    frame: Vec<u8>,
    pins: std::path::PathBuf,
}

impl Drop for Case {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

impl Case {
    fn run(&mut self) -> i32 {
        let prog = self.loaded.program().expect("program");
        prog.test_run(TestRunOptions { data_in: Some(&self.frame), ..Default::default() }).expect("BPF_PROG_TEST_RUN").return_value as i32
    }
    fn packets(&self, slot: usize) -> u64 {
        self.loaded.counters().expect("counters")[slot].packets
    }
    /// Runs the packet once: its verdict and the counter slot it counted on.
    fn decide(&mut self) -> (i32, usize) {
        let before: Vec<u64> = (0..3).map(|i| self.packets(i)).collect();
        let rc = self.run();
        let slot = (0..3).find(|&i| self.packets(i) != before[i]).expect("a slot counted the packet");
        (rc, slot)
    }
    fn learned(&mut self) -> Array<&mut MapData, LearnBucket> {
        Array::try_from(self.loaded.ebpf.map_mut(MAP_DNS_LEARN_V4).expect("DNS_LEARN_V4")).expect("array")
    }
    fn bucket_index(&mut self) -> u32 {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&ADDR);
        learn_bucket(&addr) & (self.learned().len() - 1)
    }
    /// Writes the bucket of ADDR: (pattern, expires) ways, and moves its
    /// epoch on only if `bump`.
    fn set_ways(&mut self, ways: &[(&str, u64)], bump: bool) {
        let i = self.bucket_index();
        let mut arr = self.learned();
        let mut b = arr.get(&i, 0).expect("bucket");
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&ADDR);
        b.ways = Default::default();
        for (w, (pattern, expires)) in ways.iter().enumerate() {
            let id = rules::pattern_id(pattern);
            b.ways[w] = LearnWay { addr, expires: *expires, pattern: id, name: 0, seal: learn_seal(&addr, *expires, id, 0) };
        }
        if bump {
            b.epoch = b.epoch.wrapping_add(1);
        }
        arr.set(i, b, 0).expect("write bucket");
    }
    /// The flow-cache slots in use.
    fn cached(&mut self) -> Vec<FlowEntryV4> {
        let m = self.loaded.ebpf.map_mut(MAP_FLOW_V4).expect("FLOW_V4");
        let arr: Array<&mut MapData, FlowEntryV4> = Array::try_from(m).expect("array");
        arr.iter().map(|e| e.expect("read")).filter(|e| *e != FlowEntryV4::default()).collect()
    }
}

fn case(tag: &str) -> Case {
    let rs = rules::parse("cache.toml", RULES).expect("rules");
    let c = compile::compile(&rs).expect("compile");
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/egress-test-dnscache-{tag}-{}", std::process::id()));
    let dns = DnsLoad { config: rs.dns.clone().expect("[dns]"), key: [1, 2], dir: pins.clone() };
    let loaded = Loaded::with_options(&c, &LoadOptions { dns: Some(dns), flow_cache: 64, ..LoadOptions::default() }).expect("load");
    let meta = PacketMeta {
        src: "192.0.2.1".parse().unwrap(),
        dst: std::net::Ipv4Addr::from(ADDR).into(),
        proto: 6,
        l4: L4::Ports { dport: 443 },
    };
    Case { loaded, frame: packet::build(&meta, &Shape::default()), pins }
}

/// Cached until the bucket's epoch moves: a way written without moving it is
/// not seen (the verdict came from the cache), then is seen once it moves.
#[test]
fn a_learned_verdict_is_cached_until_its_bucket_changes() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let mut c = case("epoch");
    let (deny, allow) = (TC_ACT_SHOT, TC_ACT_UNSPEC);
    // Nothing learned: the default denies, and a rule by name could change
    // that, so the slot is a learned-name one.
    assert_eq!(c.decide(), (deny, 0));
    let slots = c.cached();
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert_ne!(slots[0].value.action & FLOW_LEARNED, 0, "{slots:?}");

    let expires = mono_coarse_ns() + 10_000_000_000;
    c.set_ways(&[("a.example", expires)], false);
    assert_eq!(c.decide(), (deny, 0), "the cached verdict stands while the bucket's epoch does");
    c.set_ways(&[("a.example", expires)], true);
    assert_eq!(c.decide(), (allow, 2), "a new epoch: looked up again, allowed by 'web'");
    let slots = c.cached();
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert_eq!(slots[0].deadline, (expires >> FLOW_DEADLINE_SHIFT) as u32, "the deadline is the address's expiry, rounded down");
    assert_eq!(c.decide(), (allow, 2), "and cached again");

    // Learned for b.example too (an earlier rule that denies).
    c.set_ways(&[("a.example", expires), ("b.example", expires)], false);
    assert_eq!(c.decide(), (allow, 2));
    c.set_ways(&[("a.example", expires), ("b.example", expires)], true);
    assert_eq!(c.decide(), (deny, 1), "the earlier rule by name wins");
}

/// Cached until what it relied on expires, with no other change.
#[test]
fn a_learned_verdict_stops_when_the_address_expires() {
    egress_tests::need_root!("BPF_PROG_TEST_RUN");
    let mut c = case("expiry");
    let expires = mono_coarse_ns() + 400_000_000;
    c.set_ways(&[("a.example", expires)], true);
    assert_eq!(c.decide(), (TC_ACT_UNSPEC, 2));
    assert_eq!(c.decide(), (TC_ACT_UNSPEC, 2), "cached");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(c.decide(), (TC_ACT_SHOT, 0), "expired: the cached allow stops at once");
}
