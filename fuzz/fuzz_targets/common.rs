//! Shared by the fuzz targets: the kernel classifier (BPF_PROG_TEST_RUN, root)
//! held to the reference.

use aya::programs::{TestRun as _, TestRunOptions};
use egress::{
    compile::Compiled,
    dataplane::{LoadOptions, Loaded},
    packet::{self, Shape},
    reference::{self, L4, PacketMeta},
    rules::RuleSet,
};
use egress_common::{TC_ACT_SHOT, TC_ACT_UNSPEC};

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Loads a compiled rule set (flow cache off: every packet runs the full lookup).
pub fn load(c: &Compiled) -> Loaded {
    let opts = LoadOptions { flow_cache: 0, ..LoadOptions::default() };
    Loaded::with_options(c, &opts).unwrap_or_else(|e| panic!("an accepted rule set does not load: {e}"))
}

/// The kernel's verdict on a frame: Some(true) = passes; None when
/// BPF_PROG_TEST_RUN refuses the frame (shorter than Ethernet plus the fixed
/// IP header its EtherType names: EINVAL).
pub fn kernel_passes(l: &mut Loaded, frame: &[u8]) -> Option<bool> {
    let prog = l.program().unwrap_or_else(|e| panic!("program: {e}"));
    let r = prog.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() });
    match r.map(|r| r.return_value as i32) {
        Ok(TC_ACT_UNSPEC) => Some(true),
        Ok(TC_ACT_SHOT) => Some(false),
        Ok(other) => panic!("unexpected TC verdict {other}"),
        Err(_) => None,
    }
}

/// Packets at the edges of every rule (first address of each prefix, both ends
/// of each port range, its ICMP type/code) in both families and protocols:
/// the kernel must agree with the reference on each.
pub fn agree_on_samples(rs: &RuleSet, c: &Compiled, text: &str) {
    let mut l = load(c);
    let mut metas: Vec<PacketMeta> = Vec::new();
    let any4: std::net::IpAddr = "198.51.100.9".parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let any6: std::net::IpAddr = "2001:db8::9".parse().unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into());
    for r in rs.rules.iter().take(64) {
        let firsts = |n: &Option<Vec<ipnet::IpNet>>| -> Vec<std::net::IpAddr> {
            match n {
                None => vec![any4, any6],
                Some(v) => v.iter().map(|n| n.network()).collect(),
            }
        };
        for s in firsts(&r.src) {
            for d in firsts(&r.dst) {
                if s.is_ipv6() != d.is_ipv6() {
                    continue;
                }
                let (lo, hi) = r.ports.as_ref().map_or((80, 80), |p| (p[0].0, p[p.len() - 1].1));
                for (proto, l4) in [
                    (6, L4::Ports { dport: lo }),
                    (17, L4::Ports { dport: hi }),
                    (if d.is_ipv6() { 58 } else { 1 }, L4::Icmp { ty: r.icmp_type.unwrap_or(8), code: r.icmp_code.unwrap_or(0) }),
                    (47, L4::None),
                ] {
                    metas.push(PacketMeta { src: s, dst: d, proto, l4 });
                }
            }
        }
    }
    for m in metas {
        let frame = packet::build(&m, &Shape::default());
        let k = kernel_passes(&mut l, &frame).unwrap_or_else(|| panic!("BPF_PROG_TEST_RUN refused a whole frame for {m:?}"));
        let r = reference::frame_passes(rs, &frame, true);
        assert_eq!(k, r, "kernel and reference disagree on {m:?} (kernel passes: {k})\n{text}");
    }
}
