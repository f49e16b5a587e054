//! Part 1h: the flow cache's size. One rule set loaded with caches of several
//! sizes (and none), the packet classes of part 1 measured on each in
//! shuffled order: what a cache hit saves against what a miss costs when the
//! cache outgrows the CPU's caches. The evidence for egress's default size.

use std::fmt::Write as _;

use egress::{
    compile,
    dataplane::{LoadOptions, Loaded},
    rules,
    ruleset_gen::{self, Rng},
};
use egress_common::PASS_PROGRAM_NAME;

use crate::{
    FLOWS, flows_for, median, shuffle, spread,
    testrun::{Mode, measure, named},
    traffic::distinct_targets,
};

/// The cache sizes compared (slots per family; 0 = off).
const SIZES: [u32; 5] = [0, 4_096, 8_192, 16_384, 65_536];

/// Cells of the table: (family, packet class) rows, a column per cache size.
pub(crate) fn cache_part(n: usize, rounds: usize, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 1h: the flow cache's size");
    let text = ruleset_gen::realistic(n, flows_for(n), 7);
    let rs = rules::parse("bench.toml", &text)?;
    let c = compile::compile(&rs)?;
    let mut loaded = Vec::new();
    for slots in SIZES {
        let mut l = Loaded::with_options(&c, &LoadOptions { flow_cache: slots, ..LoadOptions::default() })?;
        let pass: &mut aya::programs::SchedClassifier =
            l.ebpf.program_mut(PASS_PROGRAM_NAME).ok_or_else(|| anyhow::anyhow!("no {PASS_PROGRAM_NAME} in the object"))?.try_into()?;
        pass.load()?;
        loaded.push(l);
    }
    let modes = [Mode::Hot, Mode::Spread, Mode::SpreadDsts, Mode::NewFlows];
    // (v6, mode, Some(size index) | None for the empty program)
    let mut keys: Vec<(bool, Mode, Option<usize>)> = Vec::new();
    for v6 in [false, true] {
        for mode in modes {
            keys.push((v6, mode, None));
            keys.extend((0..SIZES.len()).map(|i| (v6, mode, Some(i))));
        }
    }
    let mut rng = Rng::new(43);
    let mut fresh = 1u64 << 40;
    let mut samples: std::collections::HashMap<(bool, Mode, Option<usize>), Vec<f64>> = Default::default();
    let pin = crate::PinnedCpu::last();
    for round in 0..rounds {
        shuffle(&mut keys, &mut rng);
        for &(v6, mode, which) in &keys {
            let (l, name) = match which {
                Some(i) => (&mut loaded[i], egress_common::PROGRAM_NAME),
                None => (&mut loaded[0], PASS_PROGRAM_NAME),
            };
            let ns = measure(named(l, name)?, v6, flows_for(n), mode, &mut fresh, &rs)?;
            samples.entry((v6, mode, which)).or_default().push(ns);
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    drop(pin);
    let _ = writeln!(md, "## 1h. The flow cache's size ({n} rules, BPF_PROG_TEST_RUN, added ns over an empty program)\n");
    let cols: Vec<String> = SIZES.iter().map(|&s| if s == 0 { "no cache".to_string() } else { format!("{s} slots") }).collect();
    let _ = writeln!(md, "| family | packets | {} |", cols.join(" | "));
    let _ = writeln!(md, "| --- | --- |{}", " ---: |".repeat(SIZES.len()));
    for v6 in [false, true] {
        for mode in modes {
            let mut e = samples.get(&(v6, mode, None)).cloned().unwrap_or_default();
            let me = median(&mut e);
            let cells: Vec<String> = (0..SIZES.len())
                .map(|i| {
                    let mut g = samples.get(&(v6, mode, Some(i))).cloned().unwrap_or_default();
                    let lo_hi: Vec<f64> = g.iter().map(|x| x - me).collect();
                    format!("+{:.0} ({})", median(&mut g) - me, spread(&lo_hi))
                })
                .collect();
            let flows = if mode == Mode::SpreadDsts { distinct_targets(&rs, v6, FLOWS).len() } else { flows_for(n) };
            let _ = writeln!(md, "| {} | {} | {} |", if v6 { "IPv6" } else { "IPv4" }, mode.label(flows), cells.join(" | "));
        }
    }
    let _ = writeln!(
        md,
        "\nOne rule set loaded once per cache size, the same packets as part 1, every (size, class) measured in shuffled order each round; medians of {rounds} rounds, spread min-max. A slot is 32 bytes (IPv4) or 64 (IPv6). A miss reads the flow's slot before the full lookup and writes it after: when the table is larger than the CPU's caches that slot is a cold line (and a TLB miss) on every new flow.\n"
    );
    Ok(())
}
