//! `cargo xtask bench [--quick]`: what the classifier costs, measured against a
//! baseline in the same run, never asserted. The parts:
//!
//! 1. BPF_PROG_TEST_RUN (testrun.rs): the classifier vs an empty program of its
//!    type: one hot packet (repeat), packets spread over up to 4096 rules
//!    (flow-cache hits), a new flow every packet (cache misses: the full lookup);
//!    adversarial rule-set shapes; the XDP program and stateful mode; the
//!    linter's time next to parse and compile.
//! 2. Real traffic (traffic.rs, sender.rs): UDP from a socket (sendmmsg) through a
//!    veth pair in fresh namespaces: no filter, empty programs, egress (flow cache
//!    on and off, stateful, on tc-ingress and XDP of the receiver), iptables-legacy,
//!    nftables rule per line and an nftables interval set; one flow and 4096
//!    flows, IPv4 and IPv6; plus `egress apply` load/replace times.
//! 3. `egress run` reload times (reload.rs).
//! 4. A flood of denied packets under `egress run`: events within the rate,
//!    the service's CPU (flood.rs).
//!
//! A target table (the targets, computed), tables and SVG plots go to
//! BENCHMARKS.md and docs/.
//!
//! Variants are interleaved in shuffled order over several rounds; tables report
//! the median and the spread (min-max). Results go to stdout and BENCHMARKS.md.

use std::{fmt::Write as _, process::ExitCode};

use egress::{
    packet::{self, Shape},
    reference::{L4, PacketMeta},
    ruleset_gen::{self, FLOW_PORT_BASE, Rng},
};
use egress_tests::{A4, A6, B4, B6, is_root};

mod adversarial;
mod cachesize;
mod cgroup;
mod dns;
mod firewalls;
mod flood;
mod lpm;
mod plots;
mod pps;
mod reload;
mod report;
mod sender;
mod testrun;
mod traffic;

use adversarial::adversarial_part;
use report::{SpeedResult, TestRunAdded, targets};
use testrun::{hooks_part, lint_part, testrun_part};
use traffic::{Case, traffic_part};

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
    /// Only part 1 (BPF_PROG_TEST_RUN).
    testrun_only: bool,
    /// Only part 5 (a flood of denied packets under `egress run`).
    flood_only: bool,
    lint_only: bool,
    dns_only: bool,
    cgroup_only: bool,
    /// Only part 1g (packets per second on one core).
    pps_only: bool,
    /// Only part 1b (adversarial rule-set shapes).
    adversarial_only: bool,
    /// Only part 1h (the flow cache's size).
    cache_only: bool,
}

fn main() -> ExitCode {
    let mut opts = Opts {
        quick: false,
        out: None,
        sizes: None,
        traffic_only: false,
        reload_only: false,
        testrun_only: false,
        flood_only: false,
        lint_only: false,
        dns_only: false,
        cgroup_only: false,
        pps_only: false,
        adversarial_only: false,
        cache_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--traffic-only" => opts.traffic_only = true,
            "--reload-only" => opts.reload_only = true,
            "--flood-only" => opts.flood_only = true,
            "--lint-only" => opts.lint_only = true,
            "--dns-only" => opts.dns_only = true,
            "--cgroup-only" => opts.cgroup_only = true,
            "--pps-only" => opts.pps_only = true,
            "--adversarial-only" => opts.adversarial_only = true,
            "--cache-only" => opts.cache_only = true,
            "--testrun-only" => opts.testrun_only = true,
            "--sizes" => opts.sizes = args.next().map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect()),
            "--out" => opts.out = args.next(),
            "--peak-rss" => {
                // Internal (part 1b): a small process between the benchmark and
                // the command measured, so that its peak RSS is its own.
                let cmd: Vec<String> = args.collect();
                return match adversarial::peak_rss(&cmd) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::from(1)
                    }
                };
            }
            "--generate" => {
                // The benchmark's rule set of N rules (or an adversarial shape's)
                // on stdout, to time `egress apply` or `check` by hand.
                let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(100_000);
                match args.next() {
                    None => print!("{}", ruleset_gen::realistic(n, flows_for(n), 7)),
                    Some(shape) if shape == "blocklist" => print!("{}", ruleset_gen::blocklist(n)),
                    Some(shape) => match ruleset_gen::ADVERSARIAL.iter().find(|(name, _)| *name == shape) {
                        Some((_, generate)) => print!("{}", generate(n)),
                        None => {
                            let names: Vec<&str> = ruleset_gen::ADVERSARIAL.iter().map(|s| s.0).collect();
                            eprintln!("error: no shape '{shape}' (shapes: {})", names.join(", "));
                            return ExitCode::from(2);
                        }
                    },
                }
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!(
                    "egress-bench [--quick] [--sizes N,N,..] [--traffic-only | --reload-only | --testrun-only | --flood-only | --lint-only | --adversarial-only | --cache-only | --dns-only | --cgroup-only | --pps-only] [--out FILE] | --generate N [pairs|nested|ports|fan|blocklist]\n\
                     see `cargo xtask bench --help`; --sizes, --traffic-only, --reload-only and --testrun-only are for exploring, not for BENCHMARKS.md"
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
    // Parts 1c and 1g pin maps, as `egress` does: mount the bpf filesystem
    // on a fresh machine where nothing has yet.
    if let Err(e) = egress::dataplane::ensure_bpffs() {
        eprintln!("error: {e:#}");
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

/// Keeps the calling thread on one CPU until dropped, then restores its
/// mask. BPF_PROG_TEST_RUN runs the program on the caller's CPU: a thread
/// that wanders between CPUs finds the maps warm in one CPU's caches and
/// cold in the other's, and counts into two runs of COUNTERS, which is
/// noise, not cost. Only around the test-run parts: processes and threads
/// started meanwhile would inherit the mask.
struct PinnedCpu(Option<libc::cpu_set_t>);

impl PinnedCpu {
    fn last() -> PinnedCpu {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity/sched_setaffinity
        // read and write one for this thread (pid 0).
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) != 0 {
                return PinnedCpu(None);
            }
            let Some(cpu) = (0..libc::CPU_SETSIZE as usize).rev().find(|&c| libc::CPU_ISSET(c, &old)) else { return PinnedCpu(None) };
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) != 0 {
                return PinnedCpu(None);
            }
            PinnedCpu(Some(old))
        }
    }
}

impl Drop for PinnedCpu {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: as in `last`, restoring the mask read there.
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), old) };
        }
    }
}

/// The egress binary's allocator (parse, lint and compile allocate a lot).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Entries of the blocklist shape (part 1b): the million a set may hold; a
/// tenth of it in a quick run.
fn blocklist_entries(o: &Opts) -> usize {
    if o.quick { 100_000 } else { egress::sets::MAX_SET_ENTRIES }
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
    if o.flood_only {
        flood::flood_part(if o.quick { 3 } else { 10 }, &mut body)?;
        println!("\n{body}");
        return Ok(());
    }
    if o.dns_only {
        dns::dns_part(*sizes.last().unwrap_or(&1_000), tr_rounds, &mut body)?;
        println!("\n{body}");
        return Ok(());
    }
    if o.cgroup_only {
        cgroup::cgroup_part(*sizes.last().unwrap_or(&1_000), tr_rounds, &mut body)?;
        println!("\n{body}");
        return Ok(());
    }
    if o.pps_only {
        pps::pps_part(*sizes.last().unwrap_or(&1_000), tr_rounds, o.quick, &mut body, &mut SpeedResult::default())?;
        println!("\n{body}");
        return Ok(());
    }
    if o.lint_only {
        lint_part(sizes, tr_rounds, &mut body)?;
        println!("\n{body}");
        return Ok(());
    }
    if o.cache_only {
        cachesize::cache_part(*sizes.last().unwrap_or(&100_000), tr_rounds, &mut body)?;
        println!("\n{body}");
        return Ok(());
    }
    if o.adversarial_only {
        adversarial_part(*sizes.last().unwrap_or(&100_000), blocklist_entries(o), tr_rounds, &mut body, &mut SpeedResult::default())?;
        println!("\n{body}");
        return Ok(());
    }
    if o.reload_only {
        reload::reload_part(&reload_sizes, tr_rounds, &mut body, &mut SpeedResult::default())?;
        println!("\n{body}");
        return Ok(());
    }
    let mut tr_plot = Vec::new();
    let mut sys_plot = Vec::new();
    let mut lint_md = String::new();
    if !o.traffic_only {
        // First, before the BPF parts leave large allocations behind.
        lint_part(sizes, tr_rounds, &mut lint_md)?;
    }
    let tr = if o.traffic_only { TestRunAdded::default() } else { testrun_part(sizes, tr_rounds, &mut body, &mut tr_plot)? };
    let mut sp = SpeedResult::default();
    if !o.traffic_only {
        adversarial_part(*sizes.last().unwrap_or(&1_000), blocklist_entries(o), tr_rounds, &mut body, &mut sp)?;
        hooks_part(*sizes.last().unwrap_or(&1_000), tr_rounds, &mut body, &mut sp)?;
        dns::dns_part(*sizes.last().unwrap_or(&1_000), tr_rounds, &mut body)?;
        cgroup::cgroup_part(*sizes.last().unwrap_or(&1_000), tr_rounds, &mut body)?;
        pps::pps_part(*sizes.last().unwrap_or(&1_000), tr_rounds, o.quick, &mut body, &mut sp)?;
        cachesize::cache_part(*sizes.last().unwrap_or(&1_000), tr_rounds, &mut body)?;
        body.push_str(&lint_md);
    }
    if o.testrun_only {
        println!("\n{body}");
        return Ok(());
    }
    let tf = traffic_part(o, sizes, traffic_rounds, &mut body, &mut sys_plot)?;
    reload::reload_part(&reload_sizes, tr_rounds, &mut body, &mut sp)?;
    flood::flood_part(if o.quick { 3 } else { 10 }, &mut body)?;

    let mut md = String::new();
    let _ =
        writeln!(md, "# egress benchmarks\n\nProduced by `cargo xtask bench{}`. {}\n", if o.quick { " --quick" } else { "" }, env_line());
    let _ = writeln!(
        md,
        "Rule sets: `ruleset_gen::realistic(n, min(ceil(n/2), {FLOWS}), seed)` (mostly distinct destination prefixes of mixed lengths with ports and ranges, 2% source-specific, some ICMP, broad overlapping rules; the last min(ceil(n/2), {FLOWS}) rules each allow one UDP port to the benchmark server). BPF_PROG_TEST_RUN: medians of {tr_rounds} rounds; traffic: medians of {traffic_rounds} rounds, a fresh namespace pair per measurement; variants interleaved in shuffled order; spread = min-max over rounds.\n"
    );
    targets(&mut md, sizes, &tr, &tf);
    report::speed_targets(&mut md, sizes, &tr, &tf, &sp);
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
