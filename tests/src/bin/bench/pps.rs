//! Part 1g: a router host's hook in packets per second on one core. A
//! generator (`egress_gen6`, run by BPF_PROG_TEST_RUN with live frames: the
//! way xdp-trafficgen sends) transmits IPv6 UDP frames out of one end of a
//! veth pair, each from a random source address in 2001:db8::/32 (so no flow
//! repeats: every packet pays the full lookup); the other end's XDP hook runs
//! the receiver measured. The generator's thread and the receiver's NAPI run
//! on the same CPU, inside the timed loop, so ns/packet is the whole path on
//! one core, and the difference between receivers is what each costs.
//!
//! Receivers, each dropping every packet:
//! - the empty XDP program (XDP_DROP): the baseline;
//! - egress on the XDP hook (`egress apply --hook xdp`), N rules, default
//!   deny, with its flow cache and without (`--flow-cache 0`);
//! - nftables' netdev ingress hook with interval sets of the same rules'
//!   source and destination prefixes (XDP_PASS first: nftables runs on
//!   socket buffers, after the driver allocated one).

use std::{fmt::Write as _, net::IpAddr};

use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use egress::{
    compile,
    dataplane::Loaded,
    packet::{self, Shape},
    reference::{self, L4, PacketMeta},
    rules::{self, Action},
    ruleset_gen,
};
use egress_common::{GEN6_PROGRAM_NAME, XDP_DROP_PROGRAM_NAME, XDP_PASS_PROGRAM_NAME};
use egress_tests::{A6, B6, Pair, in_ns, sh};

use crate::{flows_for, median, spread_p, testrun::named};

/// (ifindex, MAC) of `dev` in namespace `ns`.
fn link(ns: &str, dev: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let o = std::process::Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let idx = v[0]["ifindex"].as_u64().ok_or_else(|| anyhow::anyhow!("no ifindex for {dev}"))? as u32;
    let mac: Vec<u8> = v[0]["address"].as_str().unwrap_or_default().split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    let mac: [u8; 6] = mac.try_into().map_err(|_| anyhow::anyhow!("no MAC for {dev}"))?;
    Ok((idx, mac))
}

/// An empty object's programs, for the generator and the bare receivers.
fn bare() -> anyhow::Result<Loaded> {
    let c = compile::compile(&rules::parse("bare.toml", "default_policy = \"allow\"\n")?)?;
    Ok(Loaded::new(&c, true)?)
}

/// Attaches the object's XDP program `name` to `dev` in namespace `ns`
/// (native mode); detached when the returned object is dropped.
fn attach(ns: &str, dev: &str, name: &'static str) -> anyhow::Result<Loaded> {
    let dev = dev.to_string();
    in_ns(ns, move || -> anyhow::Result<Loaded> {
        let mut l = bare()?;
        let p: &mut Xdp = named(&mut l, name)?.try_into()?;
        p.load()?;
        p.attach(&dev, XdpMode::Driver)?;
        Ok(l)
    })?
}

/// ns per packet of the generator sending `repeat` frames out of `ifindex`
/// (namespace `ns`), its thread pinned to CPU 0. The generator's object goes
/// into that thread and comes back.
fn generate(gen_obj: Loaded, ns: &str, ifindex: u32, frame: &[u8], repeat: u32) -> anyhow::Result<(Loaded, f64)> {
    let frame = frame.to_vec();
    in_ns(ns, move || -> anyhow::Result<(Loaded, f64)> {
        let mut gen_obj = gen_obj;
        // SAFETY: a zeroed cpu_set with CPU 0 set, for this thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        };
        let p: &mut Xdp = named(&mut gen_obj, GEN6_PROGRAM_NAME)?.try_into()?;
        let ns = p.test_run(opts)?.duration.as_nanos() as f64;
        Ok((gen_obj, ns))
    })?
}

/// The nftables table: netdev ingress on `dev`, interval sets of the rule
/// set's IPv6 source and destination prefixes, every packet dropped after
/// both lookups.
fn nft_netdev(rs: &rules::RuleSet, dev: &str) -> String {
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    for r in &rs.rules {
        src.extend(r.src.iter().flatten().filter(|n| n.addr().is_ipv6()).map(|n| n.to_string()));
        dst.extend(r.dst.iter().flatten().filter(|n| n.addr().is_ipv6()).map(|n| n.to_string()));
    }
    let set = |name: &str, elems: &[String]| {
        let e = if elems.is_empty() { String::new() } else { format!(" elements = {{ {} }}", elems.join(", ")) };
        format!("  set {name} {{ type ipv6_addr; flags interval; auto-merge;{e} }}\n")
    };
    format!(
        "table netdev egressbench {{\n{}{}  chain in {{\n    type filter hook ingress device \"{dev}\" priority 0; policy drop;\n    ip6 saddr @s6 counter drop\n    ip6 daddr @d6 counter drop\n    counter drop\n  }}\n}}\n",
        set("s6", &src),
        set("d6", &dst)
    )
}

pub(crate) fn pps_part(n: usize, rounds: usize, quick: bool, md: &mut String, sp: &mut crate::report::SpeedResult) -> anyhow::Result<()> {
    eprintln!("part 1g: packets per second on one core (XDP, live frames)");
    let text = ruleset_gen::realistic(n, flows_for(n), 7).replacen("default_policy = \"allow\"", "default_policy = \"deny\"", 1);
    let rs = rules::parse("pps.toml", &text)?;
    // A destination port the rules deny (by the default or a rule): every packet is dropped.
    let meta = |dport| PacketMeta { src: IpAddr::V6(A6), dst: IpAddr::V6(B6), proto: 17, l4: L4::Ports { dport } };
    let dport =
        (9..4000).find(|&p| reference::classify(&rs, &meta(p)).1 == Action::Deny).ok_or_else(|| anyhow::anyhow!("no denied port"))?;
    let rules_file = egress_tests::temp_file("pps.toml", &text);
    let p = Pair::new("pps")?;
    let (a_idx, a_mac) = link(&p.a, &p.a_if)?;
    let (_, b_mac) = link(&p.b, &p.b_if)?;
    let mut frame = packet::build(&meta(dport), &Shape { payload: 18, ..Shape::default() });
    frame[..6].copy_from_slice(&b_mac);
    frame[6..12].copy_from_slice(&a_mac);
    let mut gen_obj = Some(bare()?);
    {
        let g: &mut Xdp = named(gen_obj.as_mut().ok_or_else(|| anyhow::anyhow!("generator"))?, GEN6_PROGRAM_NAME)?.try_into()?;
        g.load()?;
    }
    let repeat: u32 = if quick { 1_000_000 } else { 4_000_000 };
    let egress_at = |args: &[&str]| -> anyhow::Result<()> {
        let mut a = vec!["--netns", p.b.as_str()];
        a.extend_from_slice(args);
        let o = std::process::Command::new(egress_tests::egress_bin()).args(&a).output()?;
        anyhow::ensure!(o.status.success(), "egress {a:?}: {}", String::from_utf8_lossy(&o.stderr));
        Ok(())
    };
    let mut res: [Vec<f64>; 4] = Default::default();
    let run = |gen_obj: &mut Option<Loaded>| -> anyhow::Result<f64> {
        let g = gen_obj.take().ok_or_else(|| anyhow::anyhow!("the generator was lost"))?;
        let (g, ns) = generate(g, &p.a, a_idx, &frame, repeat)?;
        *gen_obj = Some(g);
        Ok(ns)
    };
    let mut counted = 0u64;
    for _ in 0..rounds {
        // The empty receiver.
        {
            let _r = attach(&p.b, &p.b_if, XDP_DROP_PROGRAM_NAME)?;
            res[0].push(run(&mut gen_obj)?);
        }
        // egress, as an operator attaches it; then without its flow cache
        // (which no packet here hits: what does keeping it cost?).
        for (i, cache) in [(1, None), (3, Some("0"))] {
            let mut args = vec!["apply", "--iface", &p.b_if, "--hook", "xdp", "--rules", rules_file.to_str().unwrap_or_default()];
            if let Some(c) = cache {
                args.extend_from_slice(&["--flow-cache", c]);
            }
            egress_at(&args)?;
            let before = default_packets(&p)?;
            res[i].push(run(&mut gen_obj)?);
            counted = counted.max(default_packets(&p)?.saturating_sub(before));
            egress_at(&["detach", "--iface", &p.b_if, "--hook", "xdp"])?;
        }
        // nftables.
        {
            let _r = attach(&p.b, &p.b_if, XDP_PASS_PROGRAM_NAME)?;
            let f = egress_tests::temp_file("pps.nft", &nft_netdev(&rs, &p.b_if));
            sh(&["ip", "netns", "exec", &p.b, "nft", "-f", f.to_str().unwrap_or_default()])?;
            res[2].push(run(&mut gen_obj)?);
            sh(&["ip", "netns", "exec", &p.b, "nft", "delete", "table", "netdev", "egressbench"])?;
        }
    }
    let (base, eg, nft, nocache) =
        (median(&mut res[0].clone()), median(&mut res[1].clone()), median(&mut res[2].clone()), median(&mut res[3].clone()));
    sp.pps = Some([base, eg, nocache, nft]);
    let mpps = |ns: f64| 1000.0 / ns;
    let _ = writeln!(md, "## 1g. A router host's hook: packets per second on one core ({n} rules, XDP, live frames)\n");
    let _ = writeln!(md, "| receiver on the veth's XDP hook | ns/packet (spread) | Mpps | vs the empty program | added ns/packet |");
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: |");
    for (label, v, ns) in [
        ("empty XDP program (drops)", &res[0], base),
        ("egress, default deny (`apply --hook xdp`)", &res[1], eg),
        ("egress, the same without its flow cache (`--flow-cache 0`)", &res[3], nocache),
        ("nftables netdev ingress, interval sets of the same prefixes (after XDP_PASS)", &res[2], nft),
    ] {
        let _ = writeln!(md, "| {label} | {ns:.1} ({}) | {:.2} | {:.2}x | {:+.1} |", spread_p(v, 1), mpps(ns), ns / base, ns - base);
    }
    let _ = writeln!(
        md,
        "\negress handles {:.2}x the packets per second nftables does here. {repeat} packets per measurement, medians of {rounds} rounds; every packet has a random source address in 2001:db8::/32 (96 random bits), so egress's flow cache never hits: each packet is a flow's first and pays the parse, the flow cache's door (a per-CPU bit array: a flow is cached from its second packet) and the full lookup (the row a scan or a spoofed flood makes); without the cache, the parse and the lookup only. The generator (`egress_gen6`, BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, batches of 64, XDP_TX out of one veth end) and the receiving end's NAPI run on CPU 0, so each row is the whole path on one core; the empty program's row is the generator's and the veth's own cost. egress counted {counted} packets on its default row in its last round (of {repeat} sent). nftables runs on socket buffers, so its row includes the allocation XDP avoids: that is the point of an XDP hook on a router host.\n",
        nft / eg
    );
    Ok(())
}

/// Packets on egress's default row on the receiver (XDP hook).
fn default_packets(p: &Pair) -> anyhow::Result<u64> {
    let o = std::process::Command::new(egress_tests::egress_bin())
        .args(["--netns", &p.b, "counters", "--iface", &p.b_if, "--hook", "xdp", "--json"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    Ok(v["default"]["packets"].as_u64().unwrap_or(0))
}
