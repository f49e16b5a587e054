//! Part 1: BPF_PROG_TEST_RUN. The classifier against an empty program of the
//! same type in the same object: the program's own cost, no network stack.
//! 1: sizes and packet classes; 1b: adversarial rule-set shapes; 1c: the hooks
//! (TC, XDP) and stateful mode.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::programs::{Program, SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use egress::{
    compile,
    dataplane::{LoadOptions, Loaded},
    hook::Hook,
    packet::{self, Shape},
    reference::{L4, PacketMeta},
    rules,
    ruleset_gen::{self, FLOW_PORT_BASE, Rng},
};
use egress_common::{PASS_PROGRAM_NAME, XDP_PASS_PROGRAM_NAME, classifier_program};
use egress_tests::{A4, A6, B4, B6};

use crate::{FLOWS, flow_packet, flows_for, median, plots, report::TestRunAdded, shuffle, spread, traffic::distinct_targets};

// ---------------------------------------------------------------------------

/// ns of one run of a TC or XDP program on `frame`.
pub(crate) fn run_ns(prog: &mut Program, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    // The kernel reports the mean duration of one run over `repeat` runs.
    let r = match prog {
        Program::SchedClassifier(p) => p.test_run(opts)?,
        Program::Xdp(p) => p.test_run(opts)?,
        _ => anyhow::bail!("not a TC or XDP program"),
    };
    Ok(r.duration.as_nanos() as f64)
}

/// The named program of a loaded object.
pub(crate) fn named<'a>(l: &'a mut Loaded, name: &str) -> anyhow::Result<&'a mut Program> {
    l.ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("no {name} in the object"))
}

/// What the test_run measurement feeds the program.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Mode {
    /// One packet repeated: a flow-cache hit with everything cache-hot.
    Hot,
    /// Each flow's packet in turn, one flow per rule: flow-cache hits spread over
    /// many entries and rules.
    Spread,
    /// As Spread with 250 flows at every size: the same traffic at 1k and 100k rules.
    Spread250,
    /// Each packet to the destination of a different rule in turn (flow-cache hits,
    /// and the counters and cache slots of many rules).
    SpreadDsts,
    /// Every packet from a source never seen before: a flow-cache miss each time,
    /// turned away by the cache's door: the full lookup.
    NewFlows,
}

impl Mode {
    pub(crate) fn label(self, flows: usize) -> String {
        match self {
            Mode::Hot => "1 flow, hot".into(),
            Mode::Spread => format!("{flows} flows, 1 rule each"),
            Mode::SpreadDsts => format!("{flows} flows to {flows} rule destinations"),
            Mode::Spread250 => "250 flows, 1 rule each".into(),
            Mode::NewFlows => format!("new flow every packet ({flows} rules)"),
        }
    }
}

/// The source address of the `i`-th new flow (documentation ranges only).
pub(crate) fn new_flow_src(v6: bool, i: u64) -> std::net::IpAddr {
    if v6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, (i >> 16) as u16, i as u16).into()
    } else {
        let base = [[192u8, 0, 2], [198, 51, 100], [203, 0, 113]][(i / 256 % 3) as usize];
        Ipv4Addr::new(base[0], base[1], base[2], i as u8).into()
    }
}

/// The `i`-th new flow to one of `flows` ports: (source, destination port).
/// IPv4's documentation ranges hold 768 sources, so the port moves with the
/// source: no (source, port) pair repeats within 768 x `flows` flows
/// (while `flows + 1` and 768 share no factor beyond 3), and every packet
/// goes to another port's rule than the one before.
pub(crate) fn new_flow(v6: bool, i: u64, flows: usize) -> (std::net::IpAddr, u16) {
    let flows = flows.max(1) as u64;
    let src = if v6 { new_flow_src(true, i) } else { new_flow_src(false, i + i / flows) };
    (src, FLOW_PORT_BASE + (i % flows) as u16)
}

/// ns/packet of one measurement. `fresh` numbers new flows across calls.
pub(crate) fn measure(prog: &mut Program, v6: bool, flows: usize, mode: Mode, fresh: &mut u64, rs: &rules::RuleSet) -> anyhow::Result<f64> {
    match mode {
        Mode::Hot => run_ns(prog, &flow_packet(v6, 0), 100_000),
        Mode::Spread | Mode::Spread250 | Mode::SpreadDsts => {
            let frames: Vec<Vec<u8>> = if mode == Mode::Spread {
                (0..flows).map(|f| flow_packet(v6, f)).collect()
            } else if mode == Mode::Spread250 {
                (0..flows.min(250)).map(|f| flow_packet(v6, f)).collect()
            } else {
                let src: std::net::IpAddr = if v6 { A6.into() } else { A4.into() };
                distinct_targets(rs, v6, FLOWS)
                    .into_iter()
                    .map(|(dst, dport)| {
                        packet::build(
                            &PacketMeta { src, dst, proto: 17, l4: L4::Ports { dport } },
                            &Shape { payload: 18, ..Shape::default() },
                        )
                    })
                    .collect()
            };
            // Two first passes fill the flow cache (a flow is cached at its
            // second packet, door.rs); the measured passes hit it.
            for _ in 0..2 {
                for f in &frames {
                    run_ns(prog, f, 1)?;
                }
            }
            let mut total = 0.0;
            for _pass in 0..3 {
                for f in &frames {
                    total += run_ns(prog, f, 1)?;
                }
            }
            Ok(total / (3 * frames.len()) as f64)
        }
        Mode::NewFlows => {
            let n = 3 * flows.max(1024);
            let mut total = 0.0;
            for _ in 0..n {
                *fresh += 1;
                let dst: std::net::IpAddr = if v6 { B6.into() } else { B4.into() };
                let (src, dport) = new_flow(v6, *fresh, flows);
                let m = PacketMeta { src, dst, proto: 17, l4: L4::Ports { dport } };
                total += run_ns(prog, &packet::build(&m, &Shape { payload: 18, ..Shape::default() }), 1)?;
            }
            Ok(total / n as f64)
        }
    }
}

/// The kernel memory of the maps this process created since `before` (the
/// fds of `map_fds` then): `memlock` of /proc/self/fdinfo, which on kernels
/// since 6.4 is what each map uses.
pub(crate) fn map_memory_since(before: &std::collections::HashSet<String>) -> u64 {
    map_fds().into_iter().filter(|(fd, _)| !before.contains(fd)).map(|(_, m)| m).sum()
}

/// Open map fds of this process and their `memlock` bytes.
pub(crate) fn map_fds() -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else { return Vec::new() };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let info = std::fs::read_to_string(e.path()).ok()?;
        info.lines().any(|l| l.starts_with("map_type:")).then_some(())?;
        let mem = info.lines().find_map(|l| l.strip_prefix("memlock:"))?.trim().parse().ok()?;
        Some((e.file_name().to_string_lossy().into_owned(), mem))
    })
    .collect()
}

pub(crate) fn testrun_part(sizes: &[usize], rounds: usize, md: &mut String, plot: &mut Vec<plots::Series>) -> anyhow::Result<TestRunAdded> {
    eprintln!("part 1: BPF_PROG_TEST_RUN");
    let _ = writeln!(md, "## 1. BPF_PROG_TEST_RUN (program cost only)\n");
    let _ = writeln!(md, "| rules | LISTS / RANGES entries | family | packets | empty program ns | egress ns | added ns |");
    let _ = writeln!(md, "| ---: | ---: | --- | --- | ---: | ---: | ---: |");
    let mut loaded: Vec<(usize, Loaded, String, rules::RuleSet)> = Vec::new();
    for &n in sizes {
        let t = Instant::now();
        let text = ruleset_gen::realistic(n, flows_for(n), 7);
        let rs = rules::parse("bench.toml", &text)?;
        let c = compile::compile(&rs)?;
        // EGRESS_BENCH_FLOW_CACHE: the flow-cache slots for this part (an
        // experiment knob; the default is egress's own default).
        let flow_cache = std::env::var("EGRESS_BENCH_FLOW_CACHE").ok().and_then(|v| v.parse().ok());
        let mut l = match flow_cache {
            Some(slots) => Loaded::with_options(&c, &LoadOptions { flow_cache: slots, ..LoadOptions::default() })?,
            None => Loaded::new(&c, true)?,
        };
        let secs = t.elapsed().as_secs_f64();
        let pass: &mut SchedClassifier =
            l.ebpf.program_mut(PASS_PROGRAM_NAME).ok_or_else(|| anyhow::anyhow!("no {PASS_PROGRAM_NAME} in the object"))?.try_into()?;
        pass.load()?;
        eprintln!("  {n} rules: ready in {secs:.2} s");
        loaded.push((n, l, format!("{} / {}", c.list_slots.len(), c.ranges.len()), rs));
    }
    let mut rng = Rng::new(42);
    let modes = [Mode::Hot, Mode::Spread, Mode::Spread250, Mode::SpreadDsts, Mode::NewFlows];
    // (size index, v6, mode, is_egress) -> samples
    let mut keys: Vec<(usize, bool, Mode, bool)> = Vec::new();
    for (i, (n, _, _, _)) in loaded.iter().enumerate() {
        for v6 in [false, true] {
            for mode in modes {
                // With one rule there is one flow: the spread cases add nothing.
                if matches!(mode, Mode::Spread | Mode::SpreadDsts | Mode::Spread250) && *n == 1 {
                    continue;
                }
                // 250 flows: only where the set has more flow rules than that.
                if mode == Mode::Spread250 && flows_for(*n) <= 250 {
                    continue;
                }
                for eg in [false, true] {
                    keys.push((i, v6, mode, eg));
                }
            }
        }
    }
    let mut fresh = 0u64;
    let mut samples: std::collections::HashMap<(usize, bool, Mode, bool), Vec<f64>> = Default::default();
    let pin = crate::PinnedCpu::last();
    for round in 0..rounds {
        shuffle(&mut keys, &mut rng);
        for &(i, v6, mode, eg) in &keys {
            let (n, l, _, rs) = &mut loaded[i];
            let flows = flows_for(*n);
            let name = if eg { egress_common::PROGRAM_NAME } else { PASS_PROGRAM_NAME };
            let ns = measure(named(l, name)?, v6, flows, mode, &mut fresh, rs)?;
            samples.entry((i, v6, mode, eg)).or_default().push(ns);
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    drop(pin);
    let mut added = TestRunAdded::default();
    for v6 in [false, true] {
        for mode in modes {
            let mut points = Vec::new();
            for (i, (n, _, entries, rs)) in loaded.iter().enumerate() {
                let (Some(e), Some(g)) = (samples.get(&(i, v6, mode, false)), samples.get(&(i, v6, mode, true))) else { continue };
                let (mut e, mut g) = (e.clone(), g.clone());
                let (me, mg) = (median(&mut e), median(&mut g));
                let fam = if v6 { "IPv6" } else { "IPv4" };
                let _ = writeln!(
                    md,
                    "| {n} | {entries} | {fam} | {} | {me:.1} ({}) | {mg:.1} ({}) | {:.1} |",
                    mode.label(if mode == Mode::SpreadDsts { distinct_targets(rs, v6, FLOWS).len() } else { flows_for(*n) }),
                    spread(&e),
                    spread(&g),
                    mg - me
                );
                points.push((*n as f64, mg));
                added.insert((*n, v6, mode), mg - me);
            }
            let what = match mode {
                Mode::Hot => "1 flow, hot",
                Mode::Spread => "many flows, one destination",
                Mode::SpreadDsts => "many flows, many destinations",
                Mode::Spread250 => "250 flows",
                Mode::NewFlows => "new flow every packet",
            };
            plot.push(plots::Series { label: format!("{} {what}", if v6 { "IPv6" } else { "IPv4" }), points });
        }
    }
    let _ = writeln!(
        md,
        "\nEach spread or new-flow run is a separate BPF_PROG_TEST_RUN of one packet, so it includes the per-run overhead that the empty program shows too; the difference is the classifier's cost. Spread: two first passes fill the flow cache (a flow is cached from its second packet), three measured passes hit it. New flows: each packet has a source address never used before, so every packet is a flow's first: the flow cache's door (a per-CPU bit array of the flows seen lately) turns it away from the cache, and it takes the full lookup (the cost of a flow's first packet, and the worst case of a scan).\n"
    );
    Ok(added)
}

/// Part 1c's variant with a connection table that fits the CPU's caches.
const SMALL_TABLE: &str = "TC, stateful, 1,024-connection table";

/// Part 1c: one rule set (`n` rules) loaded for each hook kind and mode, each
/// against the empty program of its type in the same object: one hot packet
/// (stateful: an established flow, found in the connection table) and a new flow
/// every packet (stateful: the rules, then a connection-table insert).
/// tc-egress and tc-ingress run the same TC program; BPF_PROG_TEST_RUN does not
/// know the hook, so the TC rows stand for both (part 2 has tc-ingress traffic).
pub(crate) fn hooks_part(n: usize, rounds: usize, md: &mut String, sp: &mut crate::report::SpeedResult) -> anyhow::Result<()> {
    eprintln!("part 1c: hooks and stateful mode");
    let text = ruleset_gen::realistic(n, flows_for(n), 7);
    let rs = rules::parse("bench.toml", &text)?;
    let c = compile::compile(&rs)?;
    // The connection tables are pinned (as `egress apply` does); removed at the end.
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/egress-bench-{}", std::process::id()));
    struct Variant {
        label: &'static str,
        loaded: Loaded,
        program: &'static str,
        empty: &'static str,
    }
    let mut variants = Vec::new();
    // The last variant's connection table is small enough to stay in the CPU's
    // caches (32 / 64 KiB): what a new connection costs beyond the stateless
    // new flow when its bucket is not a cold line (the reason for the target).
    for (label, xdp, stateful, max_flows) in [
        ("TC (tc-egress, tc-ingress)", false, false, 0),
        ("XDP", true, false, 0),
        ("TC, stateful", false, true, egress_common::DEFAULT_MAX_FLOWS),
        ("XDP, stateful", true, true, egress_common::DEFAULT_MAX_FLOWS),
        (SMALL_TABLE, false, true, 1_024),
    ] {
        let state = stateful.then(|| {
            (rules::StateConfig { max_flows, ..rules::StateConfig::default() }, pins.join(label.replace([' ', ',', '(', ')', '-'], "")))
        });
        let opts = LoadOptions { hook: if xdp { Hook::Xdp } else { Hook::TcEgress }, state, ..LoadOptions::default() };
        let mut loaded = Loaded::with_options(&c, &opts)?;
        let empty = if xdp { XDP_PASS_PROGRAM_NAME } else { PASS_PROGRAM_NAME };
        if xdp {
            let p: &mut Xdp = named(&mut loaded, empty)?.try_into()?;
            p.load()?;
        } else {
            let p: &mut SchedClassifier = named(&mut loaded, empty)?.try_into()?;
            p.load()?;
        }
        variants.push(Variant { label, loaded, program: classifier_program(xdp, stateful, false), empty });
    }
    let modes = [Mode::Hot, Mode::NewFlows];
    let mut keys: Vec<(usize, bool, Mode, bool)> = Vec::new();
    for i in 0..variants.len() {
        for v6 in [false, true] {
            for mode in modes {
                for eg in [false, true] {
                    keys.push((i, v6, mode, eg));
                }
            }
        }
    }
    let mut rng = Rng::new(4343);
    let mut fresh = 5_000_000u64;
    let mut samples: std::collections::HashMap<(usize, bool, Mode, bool), Vec<f64>> = Default::default();
    let labels: Vec<&str> = variants.iter().map(|v| v.label).collect();
    let measured = (|| -> anyhow::Result<()> {
        let _pin = crate::PinnedCpu::last();
        for round in 0..rounds {
            shuffle(&mut keys, &mut rng);
            for &(i, v6, mode, eg) in &keys {
                let v = &mut variants[i];
                let name = if eg { v.program } else { v.empty };
                let ns = measure(named(&mut v.loaded, name)?, v6, flows_for(n), mode, &mut fresh, &rs)?;
                samples.entry((i, v6, mode, eg)).or_default().push(ns);
            }
            eprintln!("  round {}/{rounds} done", round + 1);
        }
        Ok(())
    })();
    drop(variants);
    let _ = std::fs::remove_dir_all(&pins);
    measured?;
    let _ = writeln!(md, "## 1c. Hooks and stateful mode (BPF_PROG_TEST_RUN, {n} rules)\n");
    let _ = writeln!(md, "| program | family | packets | empty program ns | egress ns | added ns |");
    let _ = writeln!(md, "| --- | --- | --- | ---: | ---: | ---: |");
    for (i, label) in labels.iter().enumerate() {
        for v6 in [false, true] {
            for mode in modes {
                let (Some(e), Some(g)) = (samples.get(&(i, v6, mode, false)), samples.get(&(i, v6, mode, true))) else { continue };
                let (mut e, mut g) = (e.clone(), g.clone());
                let (me, mg) = (median(&mut e), median(&mut g));
                let what = match (mode, label.contains("stateful")) {
                    (Mode::Hot, true) => "1 flow, established (connection table hit)".to_string(),
                    (Mode::NewFlows, true) => format!("new flow every packet (rules + connection-table insert, {} rules)", flows_for(n)),
                    _ => mode.label(flows_for(n)),
                };
                let fam = if v6 { "IPv6" } else { "IPv4" };
                let _ = writeln!(md, "| {label} | {fam} | {what} | {me:.1} ({}) | {mg:.1} ({}) | {:.1} |", spread(&e), spread(&g), mg - me);
                if mode == Mode::NewFlows && *label == SMALL_TABLE {
                    sp.small_table_new_flow.insert(v6, mg - me);
                } else if mode == Mode::NewFlows && label.starts_with("TC") {
                    sp.new_flow.insert((v6, label.contains("stateful")), mg - me);
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "\nEach program is measured against the empty program of its own type (egress_pass, egress_xdp_pass) loaded in the same object. Stateless rule sets run `egress_classify`/`egress_xdp` (everything inlined, no BPF-to-BPF call); stateful ones run `egress_classify_sf`/`egress_xdp_sf`, which ask the connection table first and run the parser's general path, the lookup and the cache write as BPF functions (ARCHITECTURE.md, \"Stateful mode\"). In the stateful rows the first packet of the hot flow creates its connection entry, the repeats find it; every new-flow packet misses the table, passes the flow cache's door (a first packet: not cached), runs the rules and inserts an entry (once the table is full, each insert evicts the least recently seen connection of its bucket). The stateful rows use the default table (`max_flows` 65,536: 2 MiB for IPv4, 4 MiB for IPv6), whose buckets a new connection reads at random, except the 1,024-connection row: its table (32 / 64 KiB) stays in the CPU's caches, so the difference between the two is what the new connection's cold bucket line costs.\n"
    );
    Ok(())
}

/// Part 1d: what the linter costs next to the parser and the compiler, per size
/// (medians of `rounds`; CPU only, nothing loaded).
pub(crate) fn lint_part(sizes: &[usize], rounds: usize, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 1d: lint");
    let _ = writeln!(md, "## 1d. Lint next to parse and compile (ms, medians of {rounds})\n");
    let _ = writeln!(md, "| rules | parse | lint | compile | warnings |");
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: |");
    for &n in sizes {
        let text = ruleset_gen::realistic(n, flows_for(n), 7);
        let (mut p, mut l, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let mut warnings = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let rs = rules::parse("bench.toml", &text)?;
            p.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            warnings = egress::lint::lint(&rs, 1).len();
            l.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            compile::compile(&rs)?;
            c.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let _ = writeln!(md, "| {n} | {:.0} | {:.0} | {:.0} | {warnings} |", median(&mut p), median(&mut l), median(&mut c));
    }
    let _ = writeln!(
        md,
        "\nThe generated sets are not lint-clean (many rules only repeat the default policy or sit under broader ones), so the lint column includes writing those warnings. The linter runs on every `check`, `apply` and `egress run` reload.\n"
    );
    Ok(())
}
