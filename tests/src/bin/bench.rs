//! `cargo xtask bench [--quick]`: what the classifier costs, measured against a
//! baseline in the same run, never asserted. Two parts:
//!
//! 1. BPF_PROG_TEST_RUN: the classifier vs an empty SCHED_CLS program, one hot
//!    packet (repeat) and packets spread over up to 4096 rules (one run each).
//! 2. Real traffic: UDP from a socket through a veth pair in fresh namespaces, no
//!    filter vs an empty tcx program vs egress, one flow and 4096 flows.
//!
//! Variants are interleaved in shuffled order over several rounds; tables report
//! the median and the spread (min-max). Results go to stdout and BENCHMARKS.md.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, TestRun as _, TestRunOptions};
use egress::{
    compile,
    dataplane::Loaded,
    packet::{self, Shape},
    reference::{L4, PacketMeta},
    rules,
    ruleset_gen::{self, FLOW_PORT_BASE, Rng},
};
use egress_common::{PASS_PROGRAM_NAME, SINK_PROGRAM_NAME};
use egress_tests::{A4, A6, B4, B6, Pair, in_ns, in_ns_io, is_root, temp_file};

const FLOWS: usize = 4096;

/// Flow rules in a set of `n`: half the set up to FLOWS, so that at every size
/// other rules stand before them.
fn flows_for(n: usize) -> usize {
    n.div_ceil(2).min(FLOWS)
}

struct Opts {
    quick: bool,
    out: Option<String>,
}

fn main() -> ExitCode {
    let mut opts = Opts { quick: false, out: None };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--out" => opts.out = args.next(),
            "--generate" => {
                // The benchmark's rule set of N rules on stdout, to time `egress apply` by hand.
                let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(100_000);
                print!("{}", ruleset_gen::realistic(n, flows_for(n), 7));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("egress-bench [--quick] [--out FILE] | --generate N: see `cargo xtask bench --help`");
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

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}-{hi:.0}")
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
    let sizes: &[usize] = if o.quick { &[1, 1_000, 10_000] } else { &[1, 1_000, 10_000, 100_000] };
    let rounds = 5;
    let mut md = String::new();
    let _ =
        writeln!(md, "# egress benchmarks\n\nProduced by `cargo xtask bench{}`. {}\n", if o.quick { " --quick" } else { "" }, env_line());
    let _ = writeln!(
        md,
        "Rule sets: `ruleset_gen::realistic(n, min(ceil(n/2), {FLOWS}), seed)` (mostly distinct destination prefixes of mixed lengths with ports and ranges, 2% source-specific, some ICMP, broad overlapping rules; the last min(ceil(n/2), {FLOWS}) rules each allow one UDP port to the benchmark server). Medians of {rounds} rounds, variants interleaved in shuffled order; spread = min-max over rounds.\n"
    );

    testrun_part(sizes, rounds, &mut md)?;
    traffic_part(o, sizes, rounds, &mut md)?;

    println!("\n{md}");
    if let Some(path) = &o.out {
        std::fs::write(path, &md)?;
        eprintln!("wrote {path}");
    }
    Ok(())
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

/// ns/packet: hot = one packet repeated; spread = each flow's packet once, averaged.
fn measure(prog: &mut SchedClassifier, v6: bool, flows: usize, hot: bool) -> anyhow::Result<f64> {
    if hot {
        return run_ns(prog, &flow_packet(v6, 0), 100_000);
    }
    let frames: Vec<Vec<u8>> = (0..flows).map(|f| flow_packet(v6, f)).collect();
    let mut total = 0.0;
    for _pass in 0..3 {
        for f in &frames {
            total += run_ns(prog, f, 1)?;
        }
    }
    Ok(total / (3 * frames.len()) as f64)
}

fn testrun_part(sizes: &[usize], rounds: usize, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 1: BPF_PROG_TEST_RUN");
    let _ = writeln!(md, "## 1. BPF_PROG_TEST_RUN (program cost only)\n");
    let _ = writeln!(
        md,
        "| rules | parse + compile + load (s) | RANGES entries | family | packets | empty program ns | egress ns | added ns |"
    );
    let _ = writeln!(md, "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |");
    let mut loaded: Vec<(usize, Loaded, f64, usize)> = Vec::new();
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
        loaded.push((n, l, secs, c.ranges.len()));
    }
    let mut rng = Rng::new(42);
    // (size index, v6, hot, is_egress) -> samples
    let mut keys: Vec<(usize, bool, bool, bool)> = Vec::new();
    for i in 0..loaded.len() {
        for v6 in [false, true] {
            for hot in [true, false] {
                // With one rule there is one flow: the spread case adds nothing.
                if !hot && loaded[i].0 == 1 {
                    continue;
                }
                for eg in [false, true] {
                    keys.push((i, v6, hot, eg));
                }
            }
        }
    }
    let mut samples: std::collections::HashMap<(usize, bool, bool, bool), Vec<f64>> = Default::default();
    for round in 0..rounds {
        shuffle(&mut keys, &mut rng);
        for &(i, v6, hot, eg) in &keys {
            let (n, l, _, _) = &mut loaded[i];
            let flows = flows_for(*n);
            let name = if eg { egress_common::PROGRAM_NAME } else { PASS_PROGRAM_NAME };
            let prog: &mut SchedClassifier = l.ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("no {name}"))?.try_into()?;
            let ns = measure(prog, v6, flows, hot)?;
            samples.entry((i, v6, hot, eg)).or_default().push(ns);
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    for (i, (n, _, secs, ports)) in loaded.iter().enumerate() {
        for v6 in [false, true] {
            for hot in [true, false] {
                let (Some(e), Some(g)) = (samples.get(&(i, v6, hot, false)), samples.get(&(i, v6, hot, true))) else {
                    continue;
                };
                let (mut e, mut g) = (e.clone(), g.clone());
                let (me, mg) = (median(&mut e), median(&mut g));
                let what = if hot { "1 hot flow".to_string() } else { format!("{} flows, 1 rule each", flows_for(*n)) };
                let _ = writeln!(
                    md,
                    "| {n} | {secs:.2} | {ports} | {} | {what} | {me:.1} ({}) | {mg:.1} ({}) | {:.1} |",
                    if v6 { "IPv6" } else { "IPv4" },
                    spread(&e),
                    spread(&g),
                    mg - me
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nEach spread-flow run is a separate BPF_PROG_TEST_RUN of one packet, so it includes the per-run timer overhead that the empty program shows too; the difference is the classifier's cost.\n"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 2: real traffic through a veth pair
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Filter {
    None,
    EmptyTcx,
    Egress(usize),
    /// iptables-legacy / ip6tables-legacy, one rule per line in OUTPUT.
    Iptables(usize),
    /// nftables, one rule per line in an inet output chain.
    NftLinear(usize),
}

impl Filter {
    fn label(self) -> String {
        match self {
            Filter::None => "no filter".into(),
            Filter::EmptyTcx => "empty tcx program".into(),
            Filter::Egress(n) => format!("egress, {n} rules"),
            Filter::Iptables(n) => format!("iptables-legacy, {n} rules"),
            Filter::NftLinear(n) => format!("nftables (rule per line), {n} rules"),
        }
    }
    fn rules(self) -> usize {
        match self {
            Filter::None | Filter::EmptyTcx => usize::MAX,
            Filter::Egress(n) | Filter::Iptables(n) | Filter::NftLinear(n) => n,
        }
    }
}

/// Sends `packets` UDP datagrams from a to b over `flows` destination ports and
/// returns wall-clock ns per datagram of the sending loop (the full send path:
/// socket, IP output, tc egress, veth, the receiver's backlog on the same CPU).
fn send(pair: &Pair, v6: bool, flows: usize, packets: usize) -> anyhow::Result<f64> {
    // b's ingress drops everything (the sink), so no socket lookups, ICMP errors or
    // queueing on the receiving side blur the comparison.
    let dst: std::net::IpAddr = if v6 { B6.into() } else { B4.into() };
    let ns = in_ns_io(&pair.a, move || -> std::io::Result<f64> {
        let sock =
            UdpSocket::bind(if v6 { SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)) } else { SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)) })?;
        // Never block: a full send buffer must not stall the benchmark.
        sock.set_nonblocking(true)?;
        let payload = [0u8; 18];
        let addrs: Vec<SocketAddr> = (0..flows).map(|f| SocketAddr::new(dst, FLOW_PORT_BASE + f as u16)).collect();
        // Warm-up: neighbour resolution, caches.
        for a in addrs.iter().cycle().take(2000) {
            let _ = sock.send_to(&payload, a);
        }
        std::thread::sleep(Duration::from_millis(20));
        // At most `packets`, and at most ~1 s (a linear filter at 100k rules needs
        // hundreds of microseconds a packet).
        let t = Instant::now();
        let budget = Duration::from_secs(1);
        let mut sent = 0;
        while sent < packets && (sent % 64 != 0 || t.elapsed() < budget) {
            let _ = sock.send_to(&payload, addrs[sent % addrs.len()]);
            sent += 1;
        }
        Ok(t.elapsed().as_nanos() as f64 / sent.max(1) as f64)
    })?;
    Ok(ns)
}

fn which(cmd: &str) -> bool {
    std::process::Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn netns_cmd(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let o = std::process::Command::new("ip").args(["netns", "exec", ns]).args(args).output()?;
    if !o.status.success() {
        anyhow::bail!("{args:?} in {ns}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// The rule's address entries of one family (`None`: any), for netfilter.
fn fam_nets(nets: &Option<Vec<ipnet::IpNet>>, v6: bool) -> Vec<Option<String>> {
    match nets {
        None => vec![None],
        Some(v) => v.iter().filter(|n| n.addr().is_ipv6() == v6).map(|n| Some(n.to_string())).collect(),
    }
}

/// A rule set as iptables-restore input for one family, one line per rule and
/// address combination, in file order.
fn iptables_restore(rs: &rules::RuleSet, v6: bool) -> String {
    use rules::{Action, Protocol};
    let verdict = |a: Action| if a == Action::Allow { "ACCEPT" } else { "DROP" };
    let mut s = format!("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT {} [0:0]\n", verdict(rs.default_policy));
    for r in &rs.rules {
        if !(if v6 { r.families.v6 } else { r.families.v4 }) {
            continue;
        }
        let mut m = String::new();
        match r.protocol {
            Protocol::All => {}
            Protocol::Tcp | Protocol::Udp => {
                let p = if r.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                m.push_str(&format!(" -p {p}"));
                if let Some((a, b)) = r.ports {
                    m.push_str(&format!(" --dport {a}:{b}"));
                }
            }
            Protocol::Icmp | Protocol::Icmpv6 => {
                let (p, opt) = if v6 { ("ipv6-icmp", "--icmpv6-type") } else { ("icmp", "--icmp-type") };
                m.push_str(&format!(" -p {p}"));
                if let Some(t) = r.icmp_type {
                    m.push_str(&format!(" {opt} {t}"));
                    if let Some(c) = r.icmp_code {
                        m.push_str(&format!("/{c}"));
                    }
                }
            }
        }
        for src in fam_nets(&r.src, v6) {
            for dst in fam_nets(&r.dst, v6) {
                s.push_str("-A OUTPUT");
                if let Some(x) = &src {
                    s.push_str(&format!(" -s {x}"));
                }
                if let Some(x) = &dst {
                    s.push_str(&format!(" -d {x}"));
                }
                s.push_str(&format!("{m} -j {}\n", verdict(r.action)));
            }
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// A rule set as an nftables inet output chain, one rule per line per family.
fn nft_linear(rs: &rules::RuleSet) -> String {
    use rules::{Action, Protocol};
    let verdict = |a: Action| if a == Action::Allow { "accept" } else { "drop" };
    let mut s = format!(
        "table inet egressbench {{\n  chain out {{\n    type filter hook output priority 0; policy {};\n",
        verdict(rs.default_policy)
    );
    for r in &rs.rules {
        for v6 in [false, true] {
            if !(if v6 { r.families.v6 } else { r.families.v4 }) {
                continue;
            }
            let fam = if v6 { "ip6" } else { "ip" };
            let set = |nets: &Option<Vec<ipnet::IpNet>>| -> Option<String> {
                let v: Vec<String> = fam_nets(nets, v6).into_iter().flatten().collect();
                if v.is_empty() { None } else { Some(format!("{{ {} }}", v.join(", "))) }
            };
            let mut line = format!("    meta nfproto {}", if v6 { "ipv6" } else { "ipv4" });
            if let Some(x) = set(&r.src) {
                line.push_str(&format!(" {fam} saddr {x}"));
            }
            if let Some(x) = set(&r.dst) {
                line.push_str(&format!(" {fam} daddr {x}"));
            }
            match r.protocol {
                Protocol::All => {}
                Protocol::Tcp | Protocol::Udp => {
                    let p = if r.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                    match r.ports {
                        Some((a, b)) if a == b => line.push_str(&format!(" {p} dport {a}")),
                        Some((a, b)) => line.push_str(&format!(" {p} dport {a}-{b}")),
                        None => line.push_str(&format!(" meta l4proto {p}")),
                    }
                }
                Protocol::Icmp | Protocol::Icmpv6 => {
                    let p = if v6 { "icmpv6" } else { "icmp" };
                    match r.icmp_type {
                        Some(t) => {
                            line.push_str(&format!(" {p} type {t}"));
                            if let Some(c) = r.icmp_code {
                                line.push_str(&format!(" {p} code {c}"));
                            }
                        }
                        None => line.push_str(&format!(" meta l4proto {}", if v6 { "ipv6-icmp" } else { "icmp" })),
                    }
                }
            }
            s.push_str(&format!("{line} {}\n", verdict(r.action)));
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// Loads one of the object's auxiliary programs (pass, sink) and attaches it to
/// `iface` inside namespace `ns`; detached when the returned value is dropped.
fn attach_aux(ns: &str, iface: &str, program: &'static str, at: TcAttachType) -> anyhow::Result<Loaded> {
    let iface = iface.to_string();
    in_ns(ns, move || -> anyhow::Result<Loaded> {
        let c = compile::compile(&rules::parse("empty.toml", "default_policy = \"allow\"\n")?)?;
        let mut l = Loaded::new(&c, true)?;
        let p: &mut SchedClassifier =
            l.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program} in the object"))?.try_into()?;
        p.load()?;
        p.attach(&iface, at)?;
        Ok(l)
    })?
}

fn traffic_part(o: &Opts, sizes: &[usize], rounds: usize, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 2: real traffic through veth");
    let packets = if o.quick { 50_000 } else { 200_000 };
    let mut files = std::collections::HashMap::new();
    for &n in sizes {
        files.insert(n, temp_file(&format!("bench-{n}.toml"), &ruleset_gen::realistic(n, flows_for(n), 7)));
    }
    let mut filters = vec![Filter::None, Filter::EmptyTcx];
    filters.extend(sizes.iter().map(|&n| Filter::Egress(n)));
    let netfilter = which("iptables-legacy-restore") && which("nft");
    if netfilter {
        filters.extend(sizes.iter().map(|&n| Filter::Iptables(n)));
        filters.extend(sizes.iter().map(|&n| Filter::NftLinear(n)));
    } else {
        eprintln!("  iptables-legacy-restore or nft missing: netfilter variants skipped");
    }
    let mut rulesets = std::collections::HashMap::new();
    for &n in sizes {
        rulesets.insert(n, rules::parse("bench.toml", &ruleset_gen::realistic(n, flows_for(n), 7))?);
    }
    let cases: Vec<(bool, usize)> = vec![(false, 1), (true, 1), (false, FLOWS)];
    let mut keys: Vec<(Filter, bool, usize)> = Vec::new();
    for &f in &filters {
        for &(v6, flows) in &cases {
            if flows > 1 && flows_for(f.rules()) < flows {
                continue;
            }
            keys.push((f, v6, flows));
        }
    }
    let mut rng = Rng::new(4242);
    let mut samples: std::collections::HashMap<(Filter, bool, usize), Vec<f64>> = Default::default();
    for round in 0..rounds {
        shuffle(&mut keys, &mut rng);
        for &(f, v6, flows) in &keys {
            // A fresh namespace pair per measurement.
            let pair = Pair::new("bench")?;
            pair.static_neighbours()?;
            let sink = attach_aux(&pair.b, &pair.b_if, SINK_PROGRAM_NAME, TcAttachType::Ingress)?;
            let mut keep = None;
            match f {
                Filter::None => {}
                Filter::EmptyTcx => keep = Some(attach_aux(&pair.a, &pair.a_if, PASS_PROGRAM_NAME, TcAttachType::Egress)?),
                Filter::Egress(n) => {
                    let out = pair.apply_file(&files[&n]);
                    if !out.status.success() {
                        anyhow::bail!("apply {n} rules: {}", String::from_utf8_lossy(&out.stderr));
                    }
                }
                Filter::Iptables(n) => {
                    for (v6, tool) in [(false, "iptables-legacy-restore"), (true, "ip6tables-legacy-restore")] {
                        let f = temp_file("ipt.rules", &iptables_restore(&rulesets[&n], v6));
                        netns_cmd(&pair.a, &[tool, f.to_str().unwrap_or_default()])?;
                    }
                }
                Filter::NftLinear(n) => {
                    let f = temp_file("nft.rules", &nft_linear(&rulesets[&n]));
                    netns_cmd(&pair.a, &["nft", "-f", f.to_str().unwrap_or_default()])?;
                }
            }
            let ns = send(&pair, v6, flows, packets)?;
            drop(keep);
            drop(sink);
            samples.entry((f, v6, flows)).or_default().push(ns);
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    let _ = writeln!(md, "## 2. Real traffic: UDP through a veth pair ({packets} datagrams per measurement, full send path)\n");
    let _ = writeln!(md, "| filter | traffic | ns/packet (spread) | added over no filter | added over empty tcx |");
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: |");
    for &(v6, flows) in &cases {
        let base = median(&mut samples.get(&(Filter::None, v6, flows)).cloned().unwrap_or_default());
        let empty = median(&mut samples.get(&(Filter::EmptyTcx, v6, flows)).cloned().unwrap_or_default());
        for &f in &filters {
            let Some(s) = samples.get(&(f, v6, flows)) else {
                continue;
            };
            let m = median(&mut s.clone());
            let what = format!(
                "{} {}",
                if v6 { "IPv6" } else { "IPv4" },
                if flows == 1 { "1 flow".to_string() } else { format!("{flows} flows, 1 rule each") }
            );
            let _ = writeln!(md, "| {} | {what} | {m:.0} ({}) | {:.0} | {:.0} |", f.label(), spread(s), m - base, m - empty);
        }
    }
    let _ = writeln!(
        md,
        "\nSending stops after {packets} datagrams or about 1 s, whichever comes first. The flow rules are at the end of each set, so linear filters walk every other rule first. iptables and nftables get the same rules translated one rule per line (first match = first line); nftables' set and concatenated-map forms are not measured yet.{}",
        if netfilter { "" } else { " iptables-legacy-restore or nft was missing: netfilter rows are absent." }
    );
    Ok(())
}
