//! Part 1b: the adversarial rule-set shapes (and a large blocklist): what each
//! costs to parse, lint, compile and load, `egress check`'s time and memory in
//! a process of its own, the map entries and kernel memory, and the program's
//! cost on a flow-cache hit and on a new flow every packet.

use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use aya::programs::SchedClassifier;
use egress::{
    compile,
    dataplane::Loaded,
    packet::{self, Shape},
    reference::{L4, PacketMeta},
    rules, ruleset_gen,
};
use egress_common::PASS_PROGRAM_NAME;
use egress_tests::B4;

use crate::{
    median,
    report::SpeedResult,
    testrun::{map_fds, map_memory_since, named, new_flow, new_flow_src, run_ns},
};

/// Destinations of the realistic shape's spread row (as many as the nested
/// shape's packets go to).
const SPREAD_DSTS: usize = 3_000;

/// 1000000 -> "1,000,000".
pub(crate) fn fmt_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Wall seconds and peak RSS (MiB) of `egress check --rules FILE`: parse, lint
/// and compile as an operator runs them, in a process of their own. Through
/// `egress-bench --peak-rss` (`peak_rss`): a child exec'd straight from this
/// large process would inherit its peak RSS in the kernel's accounting.
fn check_cost(text: &str, set: Option<&str>) -> anyhow::Result<(f64, f64)> {
    let file = egress_tests::temp_file("shape.toml", text);
    if let Some(set) = set {
        std::fs::write(file.with_file_name(SET_FILE), set)?;
    }
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--peak-rss")
        .arg(egress_tests::egress_bin())
        .args(["check", "--rules"])
        .arg(&file)
        .output()?;
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(file.with_file_name(SET_FILE));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    match (out.status.success(), it.next(), it.next()) {
        (true, Some(Ok(secs)), Some(Ok(kib))) => Ok((secs, kib / 1024.0)),
        _ => anyhow::bail!("egress check failed on the shape: {}{}", text, String::from_utf8_lossy(&out.stderr)),
    }
}

/// `egress-bench --peak-rss CMD ARGS..`: runs the command (its output
/// discarded) and prints its wall seconds and peak RSS in KiB; fails if it does.
pub(crate) fn peak_rss(cmd: &[String]) -> anyhow::Result<()> {
    let (prog, args) = cmd.split_first().ok_or_else(|| anyhow::anyhow!("--peak-rss needs a command"))?;
    let t = Instant::now();
    let child =
        std::process::Command::new(prog).args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 reaps the child spawned above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{prog} failed (wait status {status})");
    println!("{secs:.3} {}", ru.ru_maxrss);
    Ok(())
}

/// A shape: its name, the rule file, the set file it names (`SET_FILE`), and
/// the packet of flow `i`.
type ShapeRow = (String, String, Option<String>, Box<dyn Fn(u64) -> PacketMeta>);

/// The set file the blocklist shape names.
const SET_FILE: &str = "blocklist.netset";

/// The realistic set and the adversarial shapes of `ruleset_gen` at `n` rules:
/// what each costs to parse, lint, compile and load, `egress check`'s time and
/// memory, the map entries and kernel memory, and what a packet costs when it
/// hits the flow cache and when it misses.
pub(crate) fn adversarial_part(n: usize, entries: usize, rounds: usize, md: &mut String, sp: &mut SpeedResult) -> anyhow::Result<()> {
    eprintln!("part 1b: adversarial rule sets");
    let _ = writeln!(md, "## 1b. Adversarial rule sets ({n} rules, IPv4)\n");
    let _ = writeln!(
        md,
        "| shape | parse s | lint s (rules unchecked) | compile s | load s | `egress check` s, peak RSS MiB | stage 1 (DIR+SPAN / DST_CLASSES) / stage 2 (SDIR+SSPAN / PAIR_LISTS) / LISTS / RANGES entries | map memory MiB | lines a first packet's lookup reads (distinct over the 2,000 packets) | empty program ns | cache hit, added ns | new flow every packet, added ns |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let flows = crate::flows_for(n);
    let k_of = |i: u64, m: u64| (i % m) as u32;
    let realistic = ruleset_gen::realistic(n, flows, 7);
    // The blocklist: a deny rule naming a set of `entries` /32s, before the realistic rules.
    let with_blocklist = realistic.replacen(
        '\n',
        &format!("\n[[set]]\nname = \"blocklist\"\nfile = \"{SET_FILE}\"\n[[rule]]\nname = \"no-blocklist\"\naction = \"deny\"\ndst = \"@blocklist\"\n"),
        1,
    );
    // The realistic shape's first packets spread over many of its destinations
    // (allow rules, each its first port): cold lines, as in the adversarial
    // shapes whose packets go to many destinations.
    let targets = crate::traffic::distinct_targets(&rules::parse("realistic.toml", &realistic)?, false, SPREAD_DSTS);
    let spread_name = format!(
        "realistic, {} destinations: as above, new flows spread over {} of its rules' destinations",
        fmt_count(targets.len()),
        fmt_count(targets.len())
    );
    let shapes: Vec<ShapeRow> = vec![
        (
            "realistic (as part 1)".into(),
            realistic.clone(),
            None,
            Box::new(move |i| {
                let (src, dport) = new_flow(false, i, flows);
                PacketMeta { src, dst: B4.into(), proto: 17, l4: L4::Ports { dport } }
            }),
        ),
        (
            spread_name,
            realistic,
            None,
            Box::new(move |i| {
                let (dst, dport) = targets[(i % targets.len().max(1) as u64) as usize];
                PacketMeta { src: new_flow_src(false, i), dst, proto: 17, l4: L4::Ports { dport } }
            }),
        ),
        (
            "pairs: every rule a distinct /32 source x /32 destination".into(),
            ruleset_gen::src_dst_pairs(n),
            None,
            Box::new(move |i| {
                let k = k_of(i, 60_000);
                PacketMeta {
                    src: Ipv4Addr::new(10, 1, (k >> 8) as u8, k as u8).into(),
                    dst: Ipv4Addr::new(10, 2, (k >> 8) as u8, k as u8).into(),
                    proto: 17,
                    l4: L4::Ports { dport: 1 },
                }
            }),
        ),
        (
            "nested: /0 ... /32 chains, port ranges at every level".into(),
            ruleset_gen::nested(n),
            None,
            Box::new(|i| PacketMeta {
                src: new_flow_src(false, i),
                dst: Ipv4Addr::from(0x0a00_0000u32 | ((i % 3000) as u32).wrapping_mul(2_654_435_761) & 0x00ff_ffff).into(),
                proto: 6,
                l4: L4::Ports { dport: 1500 },
            }),
        ),
        (
            "ports: overlapping ranges up to 4,000 wide on 4 destinations".into(),
            ruleset_gen::port_ranges(n),
            None,
            Box::new(|i| PacketMeta {
                src: new_flow_src(false, i),
                dst: Ipv4Addr::new(10, 3, 0, (i % 4) as u8).into(),
                proto: 6,
                l4: L4::Ports { dport: 1 + (i.wrapping_mul(7919) % 64_000) as u16 },
            }),
        ),
        (
            "fan: distinct /32 sources to one destination".into(),
            ruleset_gen::source_fan(n),
            None,
            Box::new(move |i| {
                let k = k_of(i, n as u64);
                PacketMeta {
                    src: Ipv4Addr::new(10, (k >> 16) as u8, (k >> 8) as u8, k as u8).into(),
                    dst: Ipv4Addr::new(10, 4, 0, 1).into(),
                    proto: 6,
                    l4: L4::Ports { dport: 443 },
                }
            }),
        ),
        (
            format!("blocklist: a set of {} /32s in one deny rule, before the realistic rules", fmt_count(entries)),
            with_blocklist,
            Some(ruleset_gen::blocklist(entries)),
            // New flows go to the listed addresses in turn.
            Box::new(move |i| PacketMeta {
                src: new_flow_src(false, i),
                dst: ruleset_gen::blocklist_addr((i % entries as u64) as u32).into(),
                proto: 6,
                l4: L4::Ports { dport: 443 },
            }),
        ),
    ];
    for (name, text, set, packet_of) in shapes {
        eprintln!("  {name}");
        let files = egress::sets::InMemory(set.iter().map(|s| (SET_FILE.to_string(), s.as_bytes().to_vec())).collect());
        let t = Instant::now();
        let rs = rules::parse_with("adversarial.toml", &text, &files)?;
        let parse = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let unchecked = egress::lint::lint(&rs, 1)
            .iter()
            .find(|w| w.kind == "unchecked")
            .and_then(|w| w.message.split(' ').next()?.parse::<usize>().ok())
            .unwrap_or(0);
        let lint = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let c = compile::compile(&rs)?;
        let compile = t.elapsed().as_secs_f64();
        let before: std::collections::HashSet<String> = map_fds().into_iter().map(|(fd, _)| fd).collect();
        let t = Instant::now();
        let mut l = Loaded::new(&c, true)?;
        let load = t.elapsed().as_secs_f64();
        let map_mib = map_memory_since(&before) as f64 / (1024.0 * 1024.0);
        let (check_s, check_rss) = check_cost(&text, set.as_deref())?;
        {
            let pass: &mut SchedClassifier = l.ebpf.program_mut(PASS_PROGRAM_NAME).ok_or_else(|| anyhow::anyhow!("no pass"))?.try_into()?;
            pass.load()?;
        }
        let frame = |i: u64| packet::build(&packet_of(i), &Shape { payload: 18, ..Shape::default() });
        let (mut empty, mut hit, mut miss) = (Vec::new(), Vec::new(), Vec::new());
        let mut fresh = 1_000_000u64;
        let pin = crate::PinnedCpu::last();
        for _ in 0..rounds {
            for eg in [false, true] {
                let name = if eg { egress_common::PROGRAM_NAME } else { PASS_PROGRAM_NAME };
                let prog = named(&mut l, name)?;
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
        drop(pin);
        let mut eh: Vec<f64> = empty.iter().map(|e| e.0).collect();
        let mut em: Vec<f64> = empty.iter().map(|e| e.1).collect();
        let (eh, em) = (median(&mut eh), median(&mut em));
        // The lines the full lookup reads, by the model of the program (the
        // same walk over the same entries), over the measured packets.
        let (mut lines, mut all) = (0usize, std::collections::HashSet::new());
        for i in 1_000_001..1_002_001u64 {
            let l = egress::compile::model::trace(&c, &packet_of(i)).1.line_set();
            lines += l.len();
            all.extend(l);
        }
        let lines = lines as f64 / 2000.0;
        let counts = c.entry_counts();
        let get = |m: &str| counts.iter().filter(|(k, _)| k.starts_with(m)).map(|(_, v)| v).sum::<usize>();
        let new_flow = median(&mut miss) - em;
        let _ = writeln!(
            md,
            "| {name} | {parse:.2} | {lint:.2} ({unchecked}) | {compile:.2} | {load:.2} | {check_s:.2}, {check_rss:.0} | {} / {} / {} / {} / {} / {} | {map_mib:.1} | {lines:.1} ({}) | {eh:.0} | {:.0} | {new_flow:.0} |",
            get("DIR") + get("SPAN"),
            get("DST"),
            get("SDIR") + get("SSPAN"),
            get("PAIR"),
            get("LISTS"),
            get("RANGES"),
            fmt_count(all.len()),
            median(&mut hit) - eh,
        );
        let short = name.split(':').next().unwrap_or(&name).to_string();
        sp.shapes.push(crate::report::ShapeCost { name: short, new_flow, lines, distinct: all.len(), map_mib });
        if name.starts_with("realistic") {
            sp.flat_bytes = Some((n, crate::report::flat_bytes(&c)));
            sp.lpm_bytes = crate::lpm::lpm_bytes(&c).map_err(|e| eprintln!("  the LPM tries' memory: {e}")).ok();
        }
    }
    let _ = writeln!(
        md,
        "\nGenerators: `ruleset_gen::{{realistic, src_dst_pairs, nested, port_ranges, source_fan, blocklist}}` (`egress-bench --generate N SHAPE` writes one; `blocklist` writes the set file, one /32 a line, FireHOL style). The blocklist row parses the set file too (its parse time is the rule file's and the set file's). Parse, lint, compile and load are timed in the benchmark's process (one run each; the lint runs on all CPUs); `egress check` is the whole command in a process of its own (parse, lint, compile), with its peak resident memory. Map memory is the kernel's own figure for the maps of the loaded rule set (`memlock` in /proc/self/fdinfo, with the flow cache and the other fixed maps). On a miss the program does the stage-1 walk (a root entry, a chunk entry per crowded address byte, a short bucket search), at most one stage-2 walk of the same form and two interval searches; ARCHITECTURE.md, \"Stages 1 and 2 in flat arrays\". New-flow packets vary the source address (in the pairs and fan shapes they go to every rule in turn). The linter's work is bounded per file: \"rules unchecked\" are those whose share of the bound ran out (README, \"Linting\").\n"
    );
    Ok(())
}
