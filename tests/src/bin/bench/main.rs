//! `cargo xtask bench [--quick]`: what the classifier costs, measured against a
//! baseline in the same run, never asserted. Two parts:
//!
//! 1. BPF_PROG_TEST_RUN: the classifier vs an empty SCHED_CLS program: one hot
//!    packet (repeat), packets spread over up to 4096 rules (flow-cache hits), and
//!    a new flow every packet (cache misses: the full lookup).
//! 2. Real traffic: UDP from a socket (sendmmsg) through a veth pair in fresh
//!    namespaces: no filter, an empty tcx program, egress (flow cache on and off),
//!    iptables-legacy, nftables rule per line and an nftables interval set; one
//!    flow and 4096 flows, IPv4 and IPv6; plus `egress apply` load/replace times.
//!
//! A target table (the targets, computed), tables and SVG plots go to
//! BENCHMARKS.md and docs/.
//!
//! Variants are interleaved in shuffled order over several rounds; tables report
//! the median and the spread (min-max). Results go to stdout and BENCHMARKS.md.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, TestRun as _, TestRunOptions};
use egress::{
    compile,
    dataplane::{LoadOptions, Loaded},
    packet::{self, Shape},
    reference::{L4, PacketMeta},
    rules,
    ruleset_gen::{self, FLOW_PORT_BASE, Rng},
};
use egress_common::{FLOW_CACHE_ENTRIES, PASS_PROGRAM_NAME, SINK_PROGRAM_NAME};
use egress_tests::{A4, A6, B4, B6, Pair, in_ns, is_root, temp_file};

mod firewalls;
mod plots;
mod reload;

use firewalls::{iptables_restore, nft_linear, nft_set};

const FLOWS: usize = 4096;

/// Flow rules in a set of `n`: half the set up to FLOWS, so that at every size
/// other rules stand before them.
fn flows_for(n: usize) -> usize {
    n.div_ceil(2).min(FLOWS)
}

struct Opts {
    quick: bool,
    out: Option<String>,
    /// Rule counts to measure instead of the default ones.
    sizes: Option<Vec<usize>>,
    /// Skip BPF_PROG_TEST_RUN (part 1).
    traffic_only: bool,
    /// Only part 4 (`egress run` reload times).
    reload_only: bool,
}

fn main() -> ExitCode {
    let mut opts = Opts { quick: false, out: None, sizes: None, traffic_only: false, reload_only: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--traffic-only" => opts.traffic_only = true,
            "--reload-only" => opts.reload_only = true,
            "--sizes" => opts.sizes = args.next().map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect()),
            "--out" => opts.out = args.next(),
            "--generate" => {
                // The benchmark's rule set of N rules on stdout, to time `egress apply` by hand.
                let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(100_000);
                print!("{}", ruleset_gen::realistic(n, flows_for(n), 7));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!(
                    "egress-bench [--quick] [--sizes N,N,..] [--traffic-only | --reload-only] [--out FILE] | --generate N\n\
                     see `cargo xtask bench --help`; --sizes, --traffic-only and --reload-only are for exploring, not for BENCHMARKS.md"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("error: unknown argument '{other}'");
                return ExitCode::from(2);
            }
        }
    }
    if !is_root() {
        eprintln!("error: the benchmark loads eBPF and creates namespaces: run it as root");
        return ExitCode::from(1);
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// "min-max" of the samples, whole numbers.
fn spread(v: &[f64]) -> String {
    spread_p(v, 0)
}

/// "min-max" of the samples with `decimals` digits after the point.
fn spread_p(v: &[f64], decimals: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.decimals$}-{hi:.decimals$}")
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

fn flow_packet(v6: bool, flow: usize) -> Vec<u8> {
    let (src, dst): (std::net::IpAddr, std::net::IpAddr) = if v6 { (A6.into(), B6.into()) } else { (A4.into(), B4.into()) };
    let m = PacketMeta { src, dst, proto: 17, l4: L4::Ports { dport: FLOW_PORT_BASE + flow as u16 } };
    packet::build(&m, &Shape { payload: 18, ..Shape::default() })
}

fn env_line() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let date = egress::counters::utc(egress::dataplane::now_unix());
    format!("kernel {kernel}; CPU {cpu} x{cpus}; egress {}; aya 0.14, aya-ebpf 0.2.1; {date} UTC", env!("CARGO_PKG_VERSION"))
}

fn run(o: &Opts) -> anyhow::Result<()> {
    let default: &[usize] = if o.quick { &[1, 1_000, 10_000] } else { &[1, 1_000, 10_000, 100_000] };
    let sizes: &[usize] = o.sizes.as_deref().unwrap_or(default);
    let (tr_rounds, traffic_rounds) = if o.quick { (3, 3) } else { (5, 3) };
    let mut body = String::new();
    let reload_sizes: Vec<usize> =
        [1_000, *sizes.last().unwrap_or(&1_000)].into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if o.reload_only {
        reload::reload_part(&reload_sizes, tr_rounds, &mut body)?;
        println!("\n{body}");
        return Ok(());
    }
    let mut tr_plot = Vec::new();
    let mut sys_plot = Vec::new();
    let tr = if o.traffic_only { TestRunAdded::default() } else { testrun_part(sizes, tr_rounds, &mut body, &mut tr_plot)? };
    if !o.traffic_only {
        adversarial_part(*sizes.last().unwrap_or(&1_000), tr_rounds, &mut body)?;
    }
    let tf = traffic_part(o, sizes, traffic_rounds, &mut body, &mut sys_plot)?;
    reload::reload_part(&reload_sizes, tr_rounds, &mut body)?;

    let mut md = String::new();
    let _ =
        writeln!(md, "# egress benchmarks\n\nProduced by `cargo xtask bench{}`. {}\n", if o.quick { " --quick" } else { "" }, env_line());
    let _ = writeln!(
        md,
        "Rule sets: `ruleset_gen::realistic(n, min(ceil(n/2), {FLOWS}), seed)` (mostly distinct destination prefixes of mixed lengths with ports and ranges, 2% source-specific, some ICMP, broad overlapping rules; the last min(ceil(n/2), {FLOWS}) rules each allow one UDP port to the benchmark server). BPF_PROG_TEST_RUN: medians of {tr_rounds} rounds; traffic: medians of {traffic_rounds} rounds, a fresh namespace pair per measurement; variants interleaved in shuffled order; spread = min-max over rounds.\n"
    );
    targets(&mut md, sizes, &tr, &tf);
    md.push_str(&body);

    let dir = o
        .out
        .as_ref()
        .map(|p| std::path::Path::new(p).parent().unwrap_or(std::path::Path::new(".")).join("docs"))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir)?;
    let mut figs = String::from("## Plots\n\n");
    let f = dir.join("bench-testrun.svg");
    plots::log_log(&f, "BPF_PROG_TEST_RUN: egress ns/packet by packet class", "ns/packet", &tr_plot)?;
    let _ = writeln!(figs, "![test_run ns/packet vs rules](docs/bench-testrun.svg)\n");
    let c = |v6, flows| Case { v6, flows, distinct: false }.label();
    for (traffic, file) in [
        (c(false, 1), "bench-ipv4-1flow.svg"),
        (c(true, 1), "bench-ipv6-1flow.svg"),
        (c(false, FLOWS), "bench-ipv4-flows.svg"),
        (c(true, FLOWS), "bench-ipv6-flows.svg"),
    ] {
        let series: Vec<plots::Series> = sys_plot
            .iter()
            .filter_map(|s| {
                let (sys, t) = s.label.split_once('|')?;
                (t == traffic).then(|| plots::Series { label: sys.to_string(), points: s.points.clone() })
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        plots::log_log(&dir.join(file), &format!("Real traffic, {traffic}: added ns/packet over no filter"), "added ns/packet", &series)?;
        let _ = writeln!(figs, "![{traffic}](docs/{file})\n");
    }
    md.push_str(&figs);

    println!("\n{md}");
    if let Some(path) = &o.out {
        std::fs::write(path, &md)?;
        eprintln!("wrote {path} and plots in {}", dir.display());
    }
    Ok(())
}

/// Medians the target check needs from part 1: (rules, v6, mode) -> added ns.
type TestRunAdded = std::collections::HashMap<(usize, bool, Mode), f64>;

/// From part 2: added ns over no filter and over the empty program, and apply times.
struct TrafficResult {
    over_none: std::collections::HashMap<(Filter, Case), f64>,
    over_empty: std::collections::HashMap<(Filter, Case), f64>,
    apply: std::collections::HashMap<usize, (f64, f64)>,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The targets, computed from this run.
fn targets(md: &mut String, sizes: &[usize], tr: &TestRunAdded, tf: &TrafficResult) {
    let big = *sizes.last().unwrap_or(&1);
    // Which targets missed, for the explanations below the table.
    let mut missed: std::collections::BTreeSet<&str> = Default::default();
    let mut check = |id: &'static str, ok: bool| {
        if !ok {
            missed.insert(id);
        }
        verdict(ok)
    };
    let _ = writeln!(md, "## Targets (rules = {big}; computed from this run)\n");
    let _ = writeln!(md, "| target | measured | result |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let get = |m: &std::collections::HashMap<(Filter, Case), f64>, f: Filter, v6: bool, flows: usize| {
        m.get(&(f, Case { v6, flows, distinct: false })).copied()
    };
    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        if let Some(x) = get(&tf.over_empty, Filter::Egress(big), v6, 1) {
            let _ = writeln!(md, "| 1. one flow, added over empty tcx <= 150 ns ({fam}) | {x:.0} ns | {} |", check("1", x <= 150.0));
        }
        if let Some(x) = get(&tf.over_none, Filter::Egress(big), v6, FLOWS) {
            let _ = writeln!(
                md,
                "| 2. {FLOWS} flows (one destination, 1 rule each), added over no filter <= 600 ns ({fam}) | {x:.0} ns | {} |",
                check("2", x <= 600.0)
            );
        }
        if let Some(x) = tf.over_none.get(&(Filter::Egress(big), Case { v6, flows: FLOWS, distinct: true })) {
            let _ = writeln!(
                md,
                "| 2. {FLOWS} flows to {FLOWS} rule destinations, added over no filter <= 600 ns ({fam}) | {x:.0} ns | {} |",
                check("2d", *x <= 600.0)
            );
        }
        for flows in [1, FLOWS] {
            let (Some(e), Some(n)) =
                (get(&tf.over_none, Filter::Egress(big), v6, flows), get(&tf.over_none, Filter::NftSet(big), v6, flows))
            else {
                continue;
            };
            let _ = writeln!(
                md,
                "| 3. >= 3x less added cost than the nftables interval set, {flows} flow(s) ({fam}) | egress {e:.0} ns, nft set {n:.0} ns: {} | {} |",
                ratio(n, e),
                check(if flows == 1 { "3n1" } else { "3n" }, n >= 3.0 * e.max(1.0))
            );
        }
        if let (Some(e), Some(i)) = (get(&tf.over_none, Filter::Egress(big), v6, 1), get(&tf.over_none, Filter::Iptables(big), v6, 1)) {
            let _ = writeln!(
                md,
                "| 3. >= 1000x less than iptables-legacy, one flow ({fam}) | egress {e:.0} ns, iptables {i:.0} ns: {} | {} |",
                ratio(i, e),
                check("3i", i >= 1000.0 * e.max(1.0))
            );
        }
        if let (Some(e), Some(i)) = (get(&tf.over_none, Filter::Egress(1), v6, 1), get(&tf.over_none, Filter::Iptables(1), v6, 1)) {
            let _ = writeln!(
                md,
                "| 3. no worse than iptables at 1 rule ({fam}; within 50 ns, the spread of the A/A no-filter rows) | egress {e:.0} ns, iptables {i:.0} ns | {} |",
                check("3one", e <= i.max(0.0) + 50.0)
            );
        }
        for mode in [Mode::Hot, Mode::Spread250] {
            // 1k rules have 500 flow rules: their 250-flow case is the plain spread.
            let small = if mode == Mode::Spread250 {
                tr.get(&(1_000, v6, Mode::Spread250)).or(tr.get(&(1_000, v6, Mode::Spread)))
            } else {
                tr.get(&(1_000, v6, mode))
            };
            let (Some(a), Some(b)) = (small, tr.get(&(big, v6, mode))) else { continue };
            let _ = writeln!(
                md,
                "| 4. cost at {big} <= 2x cost at 1000 rules, test_run {} ({fam}) | {a:.0} ns -> {b:.0} ns ({:.2}x) | {} |",
                if mode == Mode::Hot { "one flow" } else { "250 flows" },
                b / a.max(1.0),
                check("4", *b <= 2.0 * a.max(1.0))
            );
        }
    }
    if let Some((first, replace)) = tf.apply.get(&big) {
        let _ = writeln!(md, "| 5. load {big} rules <= 2 s (whole `egress apply`) | {first:.2} s | {} |", check("5", *first <= 2.0));
        let _ = writeln!(md, "| 5. replace {big} rules <= 2 s | {replace:.2} s | {} |", check("5", *replace <= 2.0));
    }
    let _ = writeln!(md, "| 5. single-rule change <= 1 ms | not supported: every apply builds and swaps a whole rule set | n/a |");
    let why: [(&str, &str); 8] = [
        (
            "1",
            "one flow: egress's hot path is a header parse, one flow-cache slot and one counter (15-30 ns in BPF_PROG_TEST_RUN); a real-traffic figure above 150 ns comes from cold CPU caches between packets on this VM or from noise (compare the spread of the no-filter A/A rows).",
        ),
        (
            "2",
            "4096 flows to one destination: each flow hits a different rule, so every packet touches a cold flow-cache slot and a cold per-CPU counter; nothing else grows with the rule count.",
        ),
        (
            "2d",
            "4096 flows to 4096 destinations: as above, plus the first packet of each flow runs the full lookup (DST trie nodes out of the CPU caches).",
        ),
        (
            "3n",
            "against the nftables interval set with 4096 flows: the nftables row is a destination-only set lookup of ONE destination, which stays in the CPU caches however many flows there are, and it counts nothing. egress classifies the whole rule and keeps a per-rule counter and a per-flow cache slot, so 4096 flows, each to a different rule, touch two or three cold cache lines a packet (BPF_PROG_TEST_RUN: 15-30 ns with one flow, 160-210 ns with 4096). The comparison is against a lower bound that does less work; per-rule counters are part of the job. The next step would be a flat counter array (one cache line instead of a pointer and a per-CPU line).",
        ),
        ("3n1", "against the nftables interval set with one flow: see target 1; both costs are small and the ratio is sensitive to noise."),
        (
            "3i",
            "1000x less than iptables-legacy: the ratio divides by egress's added cost, which is within the noise of the measurement (tens of ns); a run where it comes out near zero or tiny gives a huge ratio, a run where noise adds 100 ns a smaller one.",
        ),
        (
            "4",
            "100k vs 1k rules: the program does the same work at every size; a ratio above 2 comes from cache misses in a larger working set (more distinct counters and slots) or from noise when both costs are tens of ns.",
        ),
        (
            "5",
            "load: a cold first apply pays for zeroing fresh memory (about 130 MB at 100k rules) and reading the binary and the file; the replace row shows the warm cost.",
        ),
    ];
    if !missed.is_empty() {
        let _ = writeln!(md, "\nWhy the missed targets are missed:\n");
        for (id, text) in why {
            if missed.contains(id) {
                let _ = writeln!(md, "- Target {}: {text}", id.trim_end_matches(|c: char| c.is_alphabetic()));
            }
        }
    }
    let _ = writeln!(
        md,
        "\nTarget 2 at 1 rule per flow is measured as many flows hitting the flow cache; the cost of a flow's *first* packet (cache miss, full lookup) is in the BPF_PROG_TEST_RUN \"new flow every packet\" rows and the \"flow cache off\" traffic rows. Target 3 compares with a lower bound of nftables' set forms (see part 2).\n"
    );
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 { "egress cost below the noise".into() } else { format!("{:.1}x", a / b) }
}

// ---------------------------------------------------------------------------
// Part 1: BPF_PROG_TEST_RUN
// ---------------------------------------------------------------------------

fn run_ns(prog: &mut SchedClassifier, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    // The kernel reports the mean duration of one run over `repeat` runs.
    let r = prog.test_run(opts)?;
    Ok(r.duration.as_nanos() as f64)
}

/// What the test_run measurement feeds the program.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Mode {
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
    /// so the full lookup plus the cache insert (and an LRU eviction once full).
    NewFlows,
}

impl Mode {
    fn label(self, flows: usize) -> String {
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
fn new_flow_src(v6: bool, i: u64) -> std::net::IpAddr {
    if v6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, (i >> 16) as u16, i as u16).into()
    } else {
        let base = [[192u8, 0, 2], [198, 51, 100], [203, 0, 113]][(i / 256 % 3) as usize];
        Ipv4Addr::new(base[0], base[1], base[2], i as u8).into()
    }
}

/// ns/packet of one measurement. `fresh` numbers new flows across calls.
fn measure(prog: &mut SchedClassifier, v6: bool, flows: usize, mode: Mode, fresh: &mut u64, rs: &rules::RuleSet) -> anyhow::Result<f64> {
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
            // A first pass fills the flow cache; the measured passes hit it.
            for f in &frames {
                run_ns(prog, f, 1)?;
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
            for k in 0..n {
                *fresh += 1;
                let (dst, src) =
                    if v6 { (std::net::IpAddr::from(B6), new_flow_src(true, *fresh)) } else { (B4.into(), new_flow_src(false, *fresh)) };
                let m = PacketMeta { src, dst, proto: 17, l4: L4::Ports { dport: FLOW_PORT_BASE + (k % flows) as u16 } };
                total += run_ns(prog, &packet::build(&m, &Shape { payload: 18, ..Shape::default() }), 1)?;
            }
            Ok(total / n as f64)
        }
    }
}

/// The adversarial shapes of `ruleset_gen` at `n` rules: build time, map entries,
/// and what a packet costs when it hits the cache and when it misses.
fn adversarial_part(n: usize, rounds: usize, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 1b: adversarial rule sets");
    let _ = writeln!(md, "## 1b. Adversarial rule sets (BPF_PROG_TEST_RUN, {n} rules, IPv4)\n");
    let _ = writeln!(
        md,
        "| shape | parse + compile + load s | DST / PAIR / LISTS / RANGES entries | empty program ns | cache hit, added ns | new flow every packet, added ns |"
    );
    let _ = writeln!(md, "| --- | ---: | --- | ---: | ---: | ---: |");
    type Shape3 = (&'static str, String, fn(u64) -> PacketMeta);
    let shapes: [Shape3; 2] = [
        ("every rule a distinct /32 source x /32 destination", ruleset_gen::src_dst_pairs(n), |i| {
            let k = (i % 60_000) as usize;
            PacketMeta {
                src: Ipv4Addr::new(10, 1, (k >> 8) as u8, k as u8).into(),
                dst: Ipv4Addr::new(10, 2, (k >> 8) as u8, k as u8).into(),
                proto: 17,
                l4: L4::Ports { dport: 1 },
            }
        }),
        ("deep nesting (/0 ... /32 chains, port ranges at every level)", ruleset_gen::nested(n), |i| PacketMeta {
            src: new_flow_src(false, i),
            dst: Ipv4Addr::from(0x0a00_0000u32 | ((i % 3000) as u32).wrapping_mul(2_654_435_761) & 0x00ff_ffff).into(),
            proto: 6,
            l4: L4::Ports { dport: 1500 },
        }),
    ];
    for (name, text, packet_of) in shapes {
        let t = Instant::now();
        let rs = rules::parse("adversarial.toml", &text)?;
        let c = compile::compile(&rs)?;
        let mut l = Loaded::new(&c, true)?;
        let secs = t.elapsed().as_secs_f64();
        {
            let pass: &mut SchedClassifier = l.ebpf.program_mut(PASS_PROGRAM_NAME).ok_or_else(|| anyhow::anyhow!("no pass"))?.try_into()?;
            pass.load()?;
        }
        let frame = |i: u64| packet::build(&packet_of(i), &Shape { payload: 18, ..Shape::default() });
        let (mut empty, mut hit, mut miss) = (Vec::new(), Vec::new(), Vec::new());
        let mut fresh = 1_000_000u64;
        for _ in 0..rounds {
            for eg in [false, true] {
                let name = if eg { egress_common::PROGRAM_NAME } else { PASS_PROGRAM_NAME };
                let prog: &mut SchedClassifier = l.ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("no {name}"))?.try_into()?;
                let h = run_ns(prog, &frame(7), 100_000)?;
                let mut m = 0.0;
                for _ in 0..2000 {
                    fresh += 1;
                    m += run_ns(prog, &frame(fresh), 1)?;
                }
                if eg {
                    hit.push(h);
                    miss.push(m / 2000.0);
                } else {
                    empty.push((h, m / 2000.0));
                }
            }
        }
        let mut eh: Vec<f64> = empty.iter().map(|e| e.0).collect();
        let mut em: Vec<f64> = empty.iter().map(|e| e.1).collect();
        let (eh, em) = (median(&mut eh), median(&mut em));
        let counts = c.entry_counts();
        let get = |m: &str| counts.iter().filter(|(k, _)| k.starts_with(m)).map(|(_, v)| v).sum::<usize>();
        let _ = writeln!(
            md,
            "| {name} | {secs:.2} | {} / {} / {} / {} | {eh:.0} | {:.0} | {:.0} |",
            get("DST"),
            get("PAIR"),
            get("LISTS"),
            get("RANGES"),
            median(&mut hit) - eh,
            median(&mut miss) - em
        );
    }
    let _ = writeln!(
        md,
        "\nThe program's cost does not depend on the shape: one DST lookup, at most one PAIR lookup and two interval searches on a miss. What the shapes cost is compile time and memory (ARCHITECTURE.md, \"Sizes and the cost the design accepts\"). New-flow packets vary the source address, so in the pairs shape most of them match no rule.\n"
    );
    Ok(())
}

fn testrun_part(sizes: &[usize], rounds: usize, md: &mut String, plot: &mut Vec<plots::Series>) -> anyhow::Result<TestRunAdded> {
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
        let mut l = Loaded::new(&c, true)?;
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
    for round in 0..rounds {
        shuffle(&mut keys, &mut rng);
        for &(i, v6, mode, eg) in &keys {
            let (n, l, _, rs) = &mut loaded[i];
            let flows = flows_for(*n);
            let name = if eg { egress_common::PROGRAM_NAME } else { PASS_PROGRAM_NAME };
            let prog: &mut SchedClassifier = l.ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("no {name}"))?.try_into()?;
            let ns = measure(prog, v6, flows, mode, &mut fresh, rs)?;
            samples.entry((i, v6, mode, eg)).or_default().push(ns);
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
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
        "\nEach spread or new-flow run is a separate BPF_PROG_TEST_RUN of one packet, so it includes the per-run overhead that the empty program shows too; the difference is the classifier's cost. Spread: a first pass fills the flow cache, three measured passes hit it. New flows: each packet has a source address never used before, so every packet misses the cache and runs the full lookup plus the cache insert (the cost of a flow's first packet, and the worst case of a scan).\n"
    );
    Ok(added)
}

// ---------------------------------------------------------------------------
// Part 2: real traffic through a veth pair
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Filter {
    None,
    EmptyTcx,
    Egress(usize),
    /// egress with `--flow-cache 0`: every packet runs the full lookup.
    EgressNoCache(usize),
    /// iptables-legacy / ip6tables-legacy, one rule per line in OUTPUT.
    Iptables(usize),
    /// nftables, one rule per line in an inet output chain.
    NftLinear(usize),
    /// nftables, every rule destination in one interval set per family, one lookup.
    NftSet(usize),
}

impl Filter {
    fn label(self) -> String {
        match self {
            Filter::None => "no filter".into(),
            Filter::EmptyTcx => "empty tcx program".into(),
            Filter::Egress(n) => format!("egress, {n} rules"),
            Filter::EgressNoCache(n) => format!("egress, flow cache off, {n} rules"),
            Filter::Iptables(n) => format!("iptables-legacy, {n} rules"),
            Filter::NftLinear(n) => format!("nftables (rule per line), {n} rules"),
            Filter::NftSet(n) => format!("nftables interval set (destinations only), {n} rules"),
        }
    }
    fn system(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::EmptyTcx => "empty tcx",
            Filter::Egress(_) => "egress",
            Filter::EgressNoCache(_) => "egress, flow cache off",
            Filter::Iptables(_) => "iptables-legacy",
            Filter::NftLinear(_) => "nftables rule per line",
            Filter::NftSet(_) => "nftables interval set (lower bound)",
        }
    }
    fn rules(self) -> usize {
        match self {
            Filter::None | Filter::EmptyTcx => usize::MAX,
            Filter::Egress(n) | Filter::EgressNoCache(n) | Filter::Iptables(n) | Filter::NftLinear(n) | Filter::NftSet(n) => n,
        }
    }
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), ns. Unlike wall time it
/// leaves out time the thread spends preempted or, on a VM with paravirtual steal
/// accounting, while the vCPU is not running: the largest sources of noise here.
/// It keeps the softirq work done in the thread's context (the receive side).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to one CPU so that its packets, their softirq work and
/// the per-CPU maps stay on one CPU for the whole measurement.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Datagrams per sendmmsg call.
const BATCH: usize = 32;

/// A kind of traffic: family, number of flows, and whether the flows go to the
/// benchmark server's ports (one destination, the flow rules) or to the
/// destinations of as many distinct rules (routed via b; IPv6 only, as the
/// generated IPv4 rule destinations lie outside the documentation ranges).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Case {
    v6: bool,
    flows: usize,
    distinct: bool,
}

impl Case {
    fn label(self) -> String {
        let fam = if self.v6 { "IPv6" } else { "IPv4" };
        match (self.flows, self.distinct) {
            (1, _) => format!("{fam} 1 flow"),
            (n, false) => format!("{fam} {n} flows, 1 rule each"),
            (n, true) => format!("{fam} {n} flows to {n} rule destinations"),
        }
    }
}

/// Destinations and UDP ports that hit distinct rules of `rs` (udp or all allow
/// rules of the family without a source, the flow rules left out), at most `n`.
fn distinct_targets(rs: &rules::RuleSet, v6: bool, n: usize) -> Vec<(std::net::IpAddr, u16)> {
    let flow_dst = [std::net::IpAddr::from(B4), std::net::IpAddr::from(B6)];
    let mut seen = std::collections::HashSet::new();
    rs.rules
        .iter()
        // Allow rules only: a denied packet skips the rest of the send path and
        // would make the filter look cheaper than no filter.
        .filter(|r| {
            matches!(r.protocol, rules::Protocol::Udp | rules::Protocol::All) && r.src.is_none() && r.action == rules::Action::Allow
        })
        .filter_map(|r| {
            let d = *r.dst.as_ref()?.first()?;
            (d.addr().is_ipv6() == v6 && !flow_dst.contains(&d.addr())).then(|| (d.network(), r.ports.map(|p| p.0).unwrap_or(1)))
        })
        .filter(|t| seen.insert(t.0))
        .take(n)
        .collect()
}

/// How a measurement switches its filter on and off inside namespace a.
enum Toggle {
    /// No filter: both halves unfiltered (shows the noise floor).
    Nothing,
    /// A loaded classifier, attached to a's tcx egress hook while on.
    Tc { loaded: Loaded, program: &'static str, iface: String },
    /// Commands (argv) that add (on) and remove (off) the jump to already loaded rules.
    Cmds { on: Vec<String>, off: Vec<String> },
}

/// Runs a command (argv) in the caller's namespaces; its stderr in the error.
fn run_cmd<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> anyhow::Result<()> {
    let (cmd, rest) = args.split_first().ok_or_else(|| anyhow::anyhow!("empty command"))?;
    let o = std::process::Command::new(cmd).args(rest).output()?;
    if !o.status.success() {
        anyhow::bail!("{args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// argv from a command line without quoting.
fn argv(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// Segments per measurement, alternating unfiltered/filtered (ABBA order).
const SEGMENTS: usize = 8;

/// One measurement in a fresh pair: UDP datagrams from a to `targets` (address,
/// port; all routed to b) with sendmmsg, in SEGMENTS segments of `seg` each that
/// alternate between the filter off and on (A B B A A B B A: drift cancels).
/// Returns (mean CPU ns/packet unfiltered, mean filtered). The toggles run in the
/// sending thread, which is in namespace a; commands it starts inherit that.
fn measure_traffic(pair: &Pair, targets: Vec<(std::net::IpAddr, u16)>, toggle: Toggle, seg: Duration) -> anyhow::Result<(f64, f64)> {
    // b's ingress drops everything (the sink), so no socket lookups, ICMP errors or
    // queueing on the receiving side blur the comparison.
    let v6 = targets.first().is_some_and(|t| t.0.is_ipv6());
    let flows = targets.len();
    in_ns(&pair.a, move || -> anyhow::Result<(f64, f64)> {
        let mut toggle = toggle;
        let mut link = None;
        let mut state = false;
        let mut set = |on: bool, toggle: &mut Toggle| -> anyhow::Result<()> {
            if on == state {
                return Ok(());
            }
            state = on;
            match toggle {
                Toggle::Nothing => {}
                Toggle::Tc { loaded, program, iface } => {
                    let p: &mut SchedClassifier =
                        loaded.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program}"))?.try_into()?;
                    match (on, link.take()) {
                        (true, None) => link = Some(p.attach(iface, TcAttachType::Egress)?),
                        (false, Some(id)) => p.detach(id)?,
                        (_, l) => link = l,
                    }
                }
                Toggle::Cmds { on: a, off: b } => run_cmd(if on { a } else { b })?,
            }
            Ok(())
        };
        pin_to_cpu(1);
        let sock =
            UdpSocket::bind(if v6 { SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)) } else { SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)) })?;
        // Never block: a full send buffer must not stall the benchmark.
        sock.set_nonblocking(true)?;
        let fd = sock.as_raw_fd();
        let mut payload = [0u8; 18];
        let addrs: Vec<socket2::SockAddr> = targets.iter().map(|&(ip, port)| SocketAddr::new(ip, port).into()).collect();
        let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
        // SAFETY: mmsghdr is plain data; zero is a valid (empty) header.
        let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut next = 0usize;
        let mut batch = |hdrs: &mut Vec<libc::mmsghdr>, next: &mut usize| -> usize {
            for h in hdrs.iter_mut() {
                let a = &addrs[*next % addrs.len()];
                *next += 1;
                h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = a.len();
                h.msg_hdr.msg_iov = &mut iov;
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: BATCH headers, each pointing at a live address and the payload.
            let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), BATCH as libc::c_uint, 0) };
            if n < 0 { 0 } else { n as usize }
        };
        let mut segment = |hdrs: &mut Vec<libc::mmsghdr>, next: &mut usize| -> f64 {
            // Warm-up after a switch: the flow cache, the CPU caches.
            for _ in 0..(2 * flows / BATCH).max(32) {
                batch(hdrs, next);
            }
            let t = Instant::now();
            let c0 = thread_cpu_ns();
            let mut sent = 0;
            while t.elapsed() < seg {
                sent += batch(hdrs, next);
            }
            (thread_cpu_ns() - c0) as f64 / sent.max(1) as f64
        };
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for i in 0..SEGMENTS {
            // A B B A A B B A
            let filtered = matches!(i % 4, 1 | 2);
            set(filtered, &mut toggle)?;
            let ns = segment(&mut hdrs, &mut next);
            if filtered { on.push(ns) } else { off.push(ns) }
        }
        set(false, &mut toggle)?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        Ok((mean(&off), mean(&on)))
    })?
}

fn which(cmd: &str) -> bool {
    std::process::Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn netns_cmd(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    run_cmd(&[&["ip", "netns", "exec", ns], args].concat())
}

/// Loads one of the object's auxiliary programs (pass, sink) and attaches it to
/// `iface` inside namespace `ns`; detached when the returned value is dropped.
fn attach_aux(ns: &str, iface: &str, program: &'static str, at: TcAttachType) -> anyhow::Result<Loaded> {
    let iface = iface.to_string();
    in_ns(ns, move || -> anyhow::Result<Loaded> {
        let mut l = load_aux(program)?;
        let p: &mut SchedClassifier =
            l.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program} in the object"))?.try_into()?;
        p.attach(&iface, at)?;
        Ok(l)
    })?
}

/// Loads one of the object's auxiliary programs (not attached).
fn load_aux(program: &'static str) -> anyhow::Result<Loaded> {
    let c = compile::compile(&rules::parse("empty.toml", "default_policy = \"allow\"\n")?)?;
    let mut l = Loaded::new(&c, true)?;
    let p: &mut SchedClassifier = l.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program} in the object"))?.try_into()?;
    p.load()?;
    Ok(l)
}

/// Median seconds of `egress apply` of each size: (first load, replace).
type ApplyTimes = std::collections::HashMap<usize, (Vec<f64>, Vec<f64>)>;

fn timed_apply(pair: &Pair, file: &std::path::Path, extra: &[&str]) -> anyhow::Result<f64> {
    let f = file.to_string_lossy().into_owned();
    let mut args = vec!["apply", "--iface", &pair.a_if, "--rules", &f];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let out = pair.egress(&args);
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        anyhow::bail!("egress {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(secs)
}

fn traffic_part(o: &Opts, sizes: &[usize], rounds: usize, md: &mut String, plot: &mut Vec<plots::Series>) -> anyhow::Result<TrafficResult> {
    eprintln!("part 2: real traffic through veth");
    let seg = Duration::from_millis(if o.quick { 60 } else { 150 });
    let largest = *sizes.last().unwrap_or(&1);
    let mut files = std::collections::HashMap::new();
    let mut rulesets = std::collections::HashMap::new();
    let mut compiled = std::collections::HashMap::new();
    for &n in sizes {
        let text = ruleset_gen::realistic(n, flows_for(n), 7);
        files.insert(n, temp_file(&format!("bench-{n}.toml"), &text));
        let rs = rules::parse("bench.toml", &text)?;
        compiled.insert(n, compile::compile(&rs)?);
        rulesets.insert(n, rs);
    }
    let mut filters = vec![Filter::None, Filter::EmptyTcx];
    filters.extend(sizes.iter().map(|&n| Filter::Egress(n)));
    filters.push(Filter::EgressNoCache(largest));
    let netfilter = which("iptables-legacy-restore") && which("nft");
    if netfilter {
        filters.extend(sizes.iter().map(|&n| Filter::Iptables(n)));
        filters.extend(sizes.iter().map(|&n| Filter::NftLinear(n)));
        filters.extend(sizes.iter().map(|&n| Filter::NftSet(n)));
    } else {
        eprintln!("  iptables-legacy-restore or nft missing: netfilter variants skipped");
    }
    let c = |v6, flows, distinct| Case { v6, flows, distinct };
    let cases: Vec<Case> = vec![c(false, 1, false), c(true, 1, false), c(false, FLOWS, false), c(true, FLOWS, false), c(true, FLOWS, true)];
    let targets_of = |case: Case| -> Vec<(std::net::IpAddr, u16)> {
        if case.distinct {
            return distinct_targets(&rulesets[&largest], true, case.flows);
        }
        let dst: std::net::IpAddr = if case.v6 { B6.into() } else { B4.into() };
        (0..case.flows).map(|f| (dst, FLOW_PORT_BASE + f as u16)).collect()
    };
    let mut keys: Vec<(Filter, Case)> = Vec::new();
    for &f in &filters {
        for &case in &cases {
            if case.flows > 1 && flows_for(f.rules()) < case.flows {
                continue;
            }
            // Distinct destinations: the largest set only (and the baselines).
            if case.distinct && f.rules() != largest && f.rules() != usize::MAX {
                continue;
            }
            keys.push((f, case));
        }
    }
    let mut rng = Rng::new(4242);
    let mut samples: std::collections::HashMap<(Filter, Case), Vec<f64>> = Default::default();
    // Per measurement: filtered minus the same pair's unfiltered run.
    let mut paired: std::collections::HashMap<(Filter, Case), Vec<f64>> = Default::default();
    let mut apply_times: ApplyTimes = Default::default();
    let total = keys.len() * rounds;
    let started = Instant::now();
    for round in 0..rounds {
        shuffle(&mut keys, &mut rng);
        for (k, &(f, case)) in keys.iter().enumerate() {
            let v6 = case.v6;
            // A fresh namespace pair per measurement.
            let pair = Pair::new("bench")?;
            pair.static_neighbours()?;
            let sink = attach_aux(&pair.b, &pair.b_if, SINK_PROGRAM_NAME, TcAttachType::Ingress)?;
            let family = |v4: &str, v6t: &str| if v6 { v6t.to_string() } else { v4.to_string() };
            let toggle = match f {
                Filter::None => Toggle::Nothing,
                Filter::EmptyTcx => {
                    Toggle::Tc { loaded: load_aux(PASS_PROGRAM_NAME)?, program: PASS_PROGRAM_NAME, iface: pair.a_if.clone() }
                }
                Filter::Egress(n) | Filter::EgressNoCache(n) => {
                    if let Filter::Egress(_) = f {
                        // Time the real command: the first load, then a replace of the
                        // same set; then hand the interface back for the toggling.
                        let first = timed_apply(&pair, &files[&n], &[])?;
                        let replace = timed_apply(&pair, &files[&n], &[])?;
                        let e = apply_times.entry(n).or_default();
                        e.0.push(first);
                        e.1.push(replace);
                        pair.egress_ok(&["detach", "--iface", &pair.a_if]);
                    }
                    let opts = LoadOptions {
                        flow_cache: if let Filter::Egress(_) = f { FLOW_CACHE_ENTRIES } else { 0 },
                        ..LoadOptions::default()
                    };
                    let loaded = Loaded::with_options(&compiled[&n], &opts)?;
                    Toggle::Tc { loaded, program: egress_common::PROGRAM_NAME, iface: pair.a_if.clone() }
                }
                Filter::Iptables(n) => {
                    for (fv6, tool) in [(false, "iptables-legacy-restore"), (true, "ip6tables-legacy-restore")] {
                        let file = temp_file("ipt.rules", &iptables_restore(&rulesets[&n], fv6));
                        netns_cmd(&pair.a, &[tool, file.to_str().unwrap_or_default()])?;
                    }
                    let tool = family("iptables-legacy", "ip6tables-legacy");
                    Toggle::Cmds { on: argv(&format!("{tool} -A OUTPUT -j EGB")), off: argv(&format!("{tool} -D OUTPUT -j EGB")) }
                }
                Filter::NftLinear(n) | Filter::NftSet(n) => {
                    let text = if let Filter::NftLinear(_) = f { nft_linear(&rulesets[&n]) } else { nft_set(&rulesets[&n]) };
                    let file = temp_file("nft.rules", &text);
                    netns_cmd(&pair.a, &["nft", "-f", file.to_str().unwrap_or_default()])?;
                    Toggle::Cmds {
                        on: argv("nft add rule inet egressbench out jump rules"),
                        off: argv("nft flush chain inet egressbench out"),
                    }
                }
            };
            if case.distinct {
                // The rule destinations are routed to b (its address is a static neighbour).
                netns_cmd(&pair.a, &["ip", "-6", "route", "add", "2001:db8::/32", "via", "2001:db8:1::2", "dev", &pair.a_if])?;
            }
            let (off, on) = measure_traffic(&pair, targets_of(case), toggle, seg)?;
            drop(sink);
            samples.entry((f, case)).or_default().push(on);
            paired.entry((f, case)).or_default().push(on - off);
            let done = round * keys.len() + k + 1;
            if done.is_multiple_of(10) {
                let left = started.elapsed().as_secs_f64() / done as f64 * (total - done) as f64;
                eprintln!("  {done}/{total} measurements, about {:.0} min left", left / 60.0);
            }
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    let _ = writeln!(
        md,
        "## 2. Real traffic: UDP through a veth pair (sendmmsg, CPU time of the sending thread per datagram, full send path)\n"
    );
    let _ = writeln!(md, "| filter | traffic | ns/packet (spread) | added over no filter (spread) | added over empty tcx |");
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: |");
    let mut added: std::collections::HashMap<(Filter, Case), f64> = Default::default();
    let mut over_empty: std::collections::HashMap<(Filter, Case), f64> = Default::default();
    for &case in &cases {
        let empty = median(&mut paired.get(&(Filter::EmptyTcx, case)).cloned().unwrap_or_default());
        for &f in &filters {
            let (Some(s), Some(d)) = (samples.get(&(f, case)), paired.get(&(f, case))) else { continue };
            let m = median(&mut s.clone());
            let add = median(&mut d.clone());
            added.insert((f, case), add);
            over_empty.insert((f, case), add - empty);
            let what = case.label();
            let _ = writeln!(md, "| {} | {what} | {m:.0} ({}) | {add:.0} ({}) | {:.0} |", f.label(), spread(s), spread(d), add - empty);
        }
    }
    let _ = writeln!(
        md,
        "\nEach measurement creates a namespace pair, loads the filter and sends in {SEGMENTS} segments of {} ms that alternate between the filter switched off and on (A B B A A B B A; egress and the empty program by attaching and detaching the tcx link, iptables and nftables by adding and removing the jump to their rule chain). \"added over no filter\" is the median over rounds of (filtered - unfiltered) within each pair; \"added over empty tcx\" subtracts the empty program's. ns/packet is the sending thread's CPU time (CLOCK_THREAD_CPUTIME_ID, pinned to one CPU; it includes the receive side's softirq work on that CPU and excludes preemption and hypervisor steal time) per datagram while filtered. egress is loaded through the same library code `egress apply` uses; the `egress apply` command itself is timed in part 3. The flow rules are at the end of each set, so linear filters walk every other rule first. iptables and nftables (rule per line) get the same rules translated one rule per line (first match = first line). The nftables interval set holds only the rules' destinations and is matched with one lookup: it does not classify ports or protocols, so it is a lower bound for any nftables set form (nftables rejects overlapping elements in a concatenated interval map, \"File exists\", so a first-match rule set cannot be written as one without resolving the overlaps first).{}\n",
        seg.as_millis(),
        if netfilter { "" } else { " iptables-legacy-restore or nft was missing: netfilter rows are absent." }
    );

    // Load and replace times.
    let _ = writeln!(md, "## 3. `egress apply`: parse, compile, load, attach (whole command, wall clock)\n");
    let _ = writeln!(md, "| rules | first load s (spread) | replace s (spread) |");
    let _ = writeln!(md, "| ---: | ---: | ---: |");
    let mut apply = std::collections::HashMap::new();
    for &n in sizes {
        let Some((first, replace)) = apply_times.get(&n) else { continue };
        let (mut a, mut b) = (first.clone(), replace.clone());
        let (ma, mb) = (median(&mut a), median(&mut b));
        apply.insert(n, (ma, mb));
        let _ = writeln!(md, "| {n} | {ma:.2} ({}) | {mb:.2} ({}) |", spread_p(first, 2), spread_p(replace, 2));
    }
    let _ = writeln!(
        md,
        "\nA replace builds the new rule set completely beside the old one and switches with one bpf_link_update; there is no incremental single-rule update.\n"
    );

    // Plot: added ns over no filter vs rules, per system.
    for &case in &cases {
        let systems = [Filter::Egress(0), Filter::EgressNoCache(0), Filter::Iptables(0), Filter::NftLinear(0), Filter::NftSet(0)];
        for sys in systems {
            let points: Vec<(f64, f64)> = added
                .iter()
                .filter(|((f, fc), _)| *fc == case && std::mem::discriminant(f) == std::mem::discriminant(&sys))
                .map(|((f, _), &ns)| (f.rules() as f64, ns))
                .collect();
            if points.is_empty() {
                continue;
            }
            let mut points = points;
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            plot.push(plots::Series { label: format!("{}|{}", sys.system(), case.label()), points });
        }
    }
    Ok(TrafficResult { over_none: added, over_empty, apply })
}
