//! Parts 2 and 3: real traffic through a veth pair (every filter against no
//! filter and an empty program in the same namespace pair) and `egress apply`
//! times. The sending side's mechanics are in sender.rs.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use egress::{
    compile,
    dataplane::{LoadOptions, Loaded},
    hook::Hook,
    rules,
    ruleset_gen::{self, FLOW_PORT_BASE, Rng},
};
use egress_common::{
    FLOW_CACHE_ENTRIES, PASS_PROGRAM_NAME, PROGRAM_NAME, SINK_PROGRAM_NAME, STATEFUL_PROGRAM_NAME, XDP_PASS_PROGRAM_NAME, XDP_PROGRAM_NAME,
};
use egress_tests::{B4, B6, Pair, in_ns, temp_file};

use crate::{
    FLOWS, Opts,
    firewalls::{iptables_restore, nft_linear, nft_set},
    flows_for, median, plots,
    report::TrafficResult,
    sender::{SEGMENTS, Toggle, argv, measure_traffic, run_cmd},
    shuffle, spread, spread_p,
};

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Filter {
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
    /// An empty program on b's tcx ingress (ahead of the sink): tc-ingress's baseline.
    EmptyTcxIngress,
    /// egress on b's tc-ingress hook (`--hook tc-ingress`), ahead of the sink.
    EgressTcIngress(usize),
    /// An empty XDP program on b (native mode): the XDP baseline.
    EmptyXdp,
    /// egress on b's XDP hook (`--hook xdp`, native mode).
    EgressXdp(usize),
    /// egress in stateful mode on a's tc-egress hook (the flows are established
    /// after their first packet).
    EgressStateful(usize),
}

impl Filter {
    pub(crate) fn label(self) -> String {
        match self {
            Filter::None => "no filter".into(),
            Filter::EmptyTcx => "empty tcx program".into(),
            Filter::Egress(n) => format!("egress, {n} rules"),
            Filter::EgressNoCache(n) => format!("egress, flow cache off, {n} rules"),
            Filter::Iptables(n) => format!("iptables-legacy, {n} rules"),
            Filter::NftLinear(n) => format!("nftables (rule per line), {n} rules"),
            Filter::NftSet(n) => format!("nftables interval set (destinations only), {n} rules"),
            Filter::EmptyTcxIngress => "empty tcx program on the receiver's ingress".into(),
            Filter::EgressTcIngress(n) => format!("egress on the receiver's tc-ingress, {n} rules"),
            Filter::EmptyXdp => "empty XDP program on the receiver (native)".into(),
            Filter::EgressXdp(n) => format!("egress on the receiver's XDP hook (native), {n} rules"),
            Filter::EgressStateful(n) => format!("egress, stateful, {n} rules"),
        }
    }
    pub(crate) fn system(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::EmptyTcx => "empty tcx",
            Filter::Egress(_) => "egress",
            Filter::EgressNoCache(_) => "egress, flow cache off",
            Filter::Iptables(_) => "iptables-legacy",
            Filter::NftLinear(_) => "nftables rule per line",
            Filter::NftSet(_) => "nftables interval set (lower bound)",
            Filter::EmptyTcxIngress => "empty tcx ingress",
            Filter::EgressTcIngress(_) => "egress tc-ingress",
            Filter::EmptyXdp => "empty XDP",
            Filter::EgressXdp(_) => "egress XDP",
            Filter::EgressStateful(_) => "egress stateful",
        }
    }
    pub(crate) fn rules(self) -> usize {
        match self {
            Filter::None | Filter::EmptyTcx | Filter::EmptyTcxIngress | Filter::EmptyXdp => usize::MAX,
            Filter::Egress(n)
            | Filter::EgressNoCache(n)
            | Filter::Iptables(n)
            | Filter::NftLinear(n)
            | Filter::NftSet(n)
            | Filter::EgressTcIngress(n)
            | Filter::EgressXdp(n)
            | Filter::EgressStateful(n) => n,
        }
    }
    /// The empty program at the same place: what "added over empty" subtracts.
    pub(crate) fn baseline(self) -> Filter {
        match self {
            Filter::EmptyTcxIngress | Filter::EgressTcIngress(_) => Filter::EmptyTcxIngress,
            Filter::EmptyXdp | Filter::EgressXdp(_) => Filter::EmptyXdp,
            _ => Filter::EmptyTcx,
        }
    }
    /// A hook other than tc-egress, or stateful mode: measured at the largest
    /// size, without the distinct-destinations case.
    fn hook_variant(self) -> bool {
        matches!(
            self,
            Filter::EmptyTcxIngress | Filter::EgressTcIngress(_) | Filter::EmptyXdp | Filter::EgressXdp(_) | Filter::EgressStateful(_)
        )
    }
}

/// A kind of traffic: family, number of flows, and whether the flows go to the
/// benchmark server's ports (one destination, the flow rules) or to the
/// destinations of as many distinct rules (routed via b; IPv6 only, as the
/// generated IPv4 rule destinations lie outside the documentation ranges).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Case {
    pub(crate) v6: bool,
    pub(crate) flows: usize,
    pub(crate) distinct: bool,
}

impl Case {
    pub(crate) fn label(self) -> String {
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
pub(crate) fn distinct_targets(rs: &rules::RuleSet, v6: bool, n: usize) -> Vec<(std::net::IpAddr, u16)> {
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
            (d.addr().is_ipv6() == v6 && !flow_dst.contains(&d.addr()))
                .then(|| (d.network(), r.ports.as_ref().map(|p| p[0].0).unwrap_or(1)))
        })
        .filter(|t| seen.insert(t.0))
        .take(n)
        .collect()
}

pub(crate) fn which(cmd: &str) -> bool {
    std::process::Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

pub(crate) fn netns_cmd(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    run_cmd(&[&["ip", "netns", "exec", ns], args].concat())
}

/// Loads one of the object's auxiliary programs (pass, sink) and attaches it to
/// `iface` inside namespace `ns`; detached when the returned value is dropped.
pub(crate) fn attach_aux(ns: &str, iface: &str, program: &'static str, at: TcAttachType) -> anyhow::Result<Loaded> {
    let iface = iface.to_string();
    in_ns(ns, move || -> anyhow::Result<Loaded> {
        let mut l = load_aux(program)?;
        let p: &mut SchedClassifier =
            l.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program} in the object"))?.try_into()?;
        p.attach(&iface, at)?;
        Ok(l)
    })?
}

/// The object with an empty rule set, no program loaded.
fn load_aux_unloaded() -> anyhow::Result<Loaded> {
    let c = compile::compile(&rules::parse("empty.toml", "default_policy = \"allow\"\n")?)?;
    Ok(Loaded::new(&c, true)?)
}

/// Loads one of the object's auxiliary TC programs (not attached).
pub(crate) fn load_aux(program: &'static str) -> anyhow::Result<Loaded> {
    let mut l = load_aux_unloaded()?;
    let p: &mut SchedClassifier = l.ebpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no {program} in the object"))?.try_into()?;
    p.load()?;
    Ok(l)
}

/// Median seconds of `egress apply` of each size: (first load, replace).
pub(crate) type ApplyTimes = std::collections::HashMap<usize, (Vec<f64>, Vec<f64>)>;

pub(crate) fn timed_apply(pair: &Pair, file: &std::path::Path, extra: &[&str]) -> anyhow::Result<f64> {
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

pub(crate) fn traffic_part(
    o: &Opts,
    sizes: &[usize],
    rounds: usize,
    md: &mut String,
    plot: &mut Vec<plots::Series>,
) -> anyhow::Result<TrafficResult> {
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
    filters.extend([
        Filter::EgressStateful(largest),
        Filter::EmptyTcxIngress,
        Filter::EgressTcIngress(largest),
        Filter::EmptyXdp,
        Filter::EgressXdp(largest),
    ]);
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
            if case.distinct && ((f.rules() != largest && f.rules() != usize::MAX) || f.hook_variant()) {
                continue;
            }
            keys.push((f, case));
        }
    }
    // Where the stateful variant pins its connection table (as `egress apply` does).
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/egress-bench-{}-traffic", std::process::id()));
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
                Filter::EmptyTcx | Filter::EmptyTcxIngress => {
                    let ingress = f == Filter::EmptyTcxIngress;
                    let (iface, ns) = if ingress { (pair.b_if.clone(), Some(pair.b.clone())) } else { (pair.a_if.clone(), None) };
                    Toggle::Tc { loaded: load_aux(PASS_PROGRAM_NAME)?, program: PASS_PROGRAM_NAME, iface, ns, ingress }
                }
                Filter::EmptyXdp => {
                    let mut loaded = load_aux_unloaded()?;
                    let p: &mut Xdp =
                        loaded.ebpf.program_mut(XDP_PASS_PROGRAM_NAME).ok_or_else(|| anyhow::anyhow!("no XDP pass"))?.try_into()?;
                    p.load()?;
                    Toggle::Xdp { loaded, program: XDP_PASS_PROGRAM_NAME, iface: pair.b_if.clone(), ns: pair.b.clone() }
                }
                Filter::EgressTcIngress(n) => {
                    let opts = LoadOptions { hook: Hook::TcIngress, ..LoadOptions::default() };
                    let loaded = Loaded::with_options(&compiled[&n], &opts)?;
                    Toggle::Tc { loaded, program: PROGRAM_NAME, iface: pair.b_if.clone(), ns: Some(pair.b.clone()), ingress: true }
                }
                Filter::EgressXdp(n) => {
                    let opts = LoadOptions { hook: Hook::Xdp, ..LoadOptions::default() };
                    let loaded = Loaded::with_options(&compiled[&n], &opts)?;
                    Toggle::Xdp { loaded, program: XDP_PROGRAM_NAME, iface: pair.b_if.clone(), ns: pair.b.clone() }
                }
                Filter::EgressStateful(n) => {
                    let state = Some((rules::StateConfig::default(), pins.clone()));
                    let loaded = Loaded::with_options(&compiled[&n], &LoadOptions { state, ..LoadOptions::default() })?;
                    Toggle::Tc { loaded, program: STATEFUL_PROGRAM_NAME, iface: pair.a_if.clone(), ns: None, ingress: false }
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
                    Toggle::Tc { loaded, program: PROGRAM_NAME, iface: pair.a_if.clone(), ns: None, ingress: false }
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
            let measured = measure_traffic(&pair, targets_of(case), toggle, seg);
            drop(sink);
            // A stateful variant's connection table starts empty in every pair.
            let _ = std::fs::remove_dir_all(&pins);
            let (off, on) = measured?;
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
    let _ = writeln!(
        md,
        "| filter | traffic | ns/packet (spread) | added over no filter (spread) | added over the empty program at the same hook |"
    );
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: |");
    let mut added: std::collections::HashMap<(Filter, Case), f64> = Default::default();
    let mut over_empty: std::collections::HashMap<(Filter, Case), f64> = Default::default();
    for &case in &cases {
        let empty = |f: Filter| median(&mut paired.get(&(f.baseline(), case)).cloned().unwrap_or_default());
        for &f in &filters {
            let empty = empty(f);
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
        "\nEach measurement creates a namespace pair, loads the filter and sends in {SEGMENTS} segments of {} ms that alternate between the filter switched off and on (A B B A A B B A; egress and the empty program by attaching and detaching the tcx link, iptables and nftables by adding and removing the jump to their rule chain). \"added over no filter\" is the median over rounds of (filtered - unfiltered) within each pair; \"added over the empty program\" subtracts the empty program's at the same hook (tcx egress on a for tc-egress and stateful rows; tcx ingress on b, first in the chain ahead of the sink, for tc-ingress; native XDP on b for XDP, where attaching any XDP program also moves veth's receive path to NAPI, so only the difference to the empty XDP program is egress's). The stateful rows run the stateful program with its connection table fresh in every pair: after each flow's first packet, every packet is an established-flow hit. ns/packet is the sending thread's CPU time (CLOCK_THREAD_CPUTIME_ID, pinned to one CPU; it includes the receive side's softirq work on that CPU and excludes preemption and hypervisor steal time) per datagram while filtered. egress is loaded through the same library code `egress apply` uses; the `egress apply` command itself is timed in part 3. The flow rules are at the end of each set, so linear filters walk every other rule first. iptables and nftables (rule per line) get the same rules translated one rule per line (first match = first line). The nftables interval set holds only the rules' destinations and is matched with one lookup: it does not classify ports or protocols, so it is a lower bound for any nftables set form (nftables rejects overlapping elements in a concatenated interval map, \"File exists\", so a first-match rule set cannot be written as one without resolving the overlaps first).{}\n",
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
        "\nA replace of a stateless rule set on the same hook and settings is a hot reload (ARCHITECTURE.md, \"Hot reloads\"): the new rule set is compared with the idle half of the loaded maps, the entries that differ are written, and EPOCH flips. Anything else builds the new rule set completely beside the old one and switches with one bpf_link_update. Either way the command reads, parses and compiles the whole file.\n"
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
