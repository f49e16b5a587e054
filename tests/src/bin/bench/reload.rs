//! Part 4: `egress run` reloads. How long from a rule file being replaced (an
//! editor's rename) to the new rule set enforced, with one rule changed, measured
//! on the service's own log: the "rules replaced" line is written after the
//! atomic swap (a hot reload's EPOCH flip, or a full reload's link update), the
//! state update and the counter fold, and says how long after the swap
//! (`after_enforced_us`).

use std::{fmt::Write as _, time::Duration};

use egress::ruleset_gen;
use egress_tests::{Daemon, Pair, replace_file, temp_file};

use crate::{flows_for, median, spread_p};

/// Seconds since midnight UTC of an RFC 3339 timestamp "YYYY-MM-DDTHH:MM:SS.ffffffZ".
fn day_secs(ts: &str) -> Option<f64> {
    let t = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s) = (it.next()?.parse::<f64>().ok()?, it.next()?.parse::<f64>().ok()?, it.next()?.parse::<f64>().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_day_secs() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// The rule set with one rule's destination ports changed (a rule near the middle).
fn one_changed(text: &str) -> anyhow::Result<String> {
    let at = text[text.len() / 2..].find("ports = \"").map(|i| i + text.len() / 2).ok_or_else(|| anyhow::anyhow!("no ports"))?;
    let start = at + "ports = \"".len();
    let end = start + text[start..].find('"').ok_or_else(|| anyhow::anyhow!("unterminated"))?;
    let old = &text[start..end];
    let new = if old == "1-2" { "3-4" } else { "1-2" };
    Ok(format!("{}{}{}", &text[..start], new, &text[end..]))
}

pub fn reload_part(sizes: &[usize], rounds: usize, md: &mut String, sp: &mut crate::report::SpeedResult) -> anyhow::Result<()> {
    let _ = writeln!(md, "## 4. `egress run`: from a rule file change to the new rules enforced\n");
    let _ = writeln!(
        md,
        "| rules | 1 rule changed: ms to enforcement (spread) | path | of which the idle half's write and flip ms | ms to the log line (state file, counter fold, lint) | of which apply ms (after parse + compile) |"
    );
    let _ = writeln!(md, "| ---: | ---: | --- | ---: | ---: | ---: |");
    for &n in sizes {
        let pair = Pair::new("rl")?;
        let text = ruleset_gen::realistic(n, flows_for(n), 7);
        let changed = one_changed(&text)?;
        let rules = temp_file("rules.toml", &text);
        let cfg = temp_file("egress.toml", &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\n", pair.a_if, rules.display()));
        let d = Daemon::start(&pair.a, &cfg, &[]);
        d.wait_for("applied", 1, |v| v["message"] == "rules applied");
        let (mut total, mut logged, mut apply, mut flip, mut paths) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            std::thread::sleep(Duration::from_millis(300));
            let t0 = now_day_secs();
            replace_file(&rules, if r % 2 == 0 { &changed } else { &text });
            let v = d.wait_for("replaced", r + 1, |v| v["message"] == "rules replaced");
            let at = v["timestamp"].as_str().and_then(day_secs).ok_or_else(|| anyhow::anyhow!("no timestamp in {v}"))?;
            logged.push((at - t0) * 1e3);
            let after = v["after_enforced_us"].as_f64().ok_or_else(|| anyhow::anyhow!("no after_enforced_us in {v}"))?;
            total.push((at - t0) * 1e3 - after / 1e3);
            apply.push(v["ms"].as_f64().unwrap_or(f64::NAN));
            flip.push(v["enforced_us"].as_f64().map_or(f64::NAN, |us| us / 1e3));
            let path = format!("{}, {} compile", v["path"].as_str().unwrap_or("?"), v["compile"].as_str().unwrap_or("?"));
            if !paths.contains(&path) {
                paths.push(path);
            }
            if v["kept"].as_u64() != Some(n as u64 - 1) {
                anyhow::bail!("expected {} rules kept: {v}", n - 1);
            }
        }
        let (t, a, f) = (median(&mut total.clone()), median(&mut apply.clone()), median(&mut flip.clone()));
        let l = median(&mut logged.clone());
        eprintln!(
            "reload {n} rules, 1 changed: {t:.0} ms to enforcement, {l:.0} ms to the log line (apply {a:.0} ms, write and flip {f:.1} ms, {paths:?})"
        );
        let _ = writeln!(md, "| {n} | {t:.0} ({}) | {} | {f:.1} | {l:.0} | {a:.0} |", spread_p(&total, 0), paths.join(", "));
        sp.reloads.push((n, t, paths.join(", ")));
        drop(d);
    }
    let _ = writeln!(
        md,
        "\nMedians of {rounds} changes, alternating one rule's ports between two values (so that rule restarts its counters and the other n-1 keep theirs). To enforcement: from the rename into place (the watcher reacts at once to it) to the swap, which the service's log line places (`after_enforced_us`); it includes reading and hashing the whole file, parsing the rules that changed (the service takes the others over from the file's last parse) and compiling: `incremental` recompiles only the destinations inside the changed rule's prefixes (compile/incremental.rs), `whole` the whole rule set (the first reload, or a recompile that would not fit the loaded maps). A hot reload (path `hot`) compares the new rule set with the idle half of the loaded program's maps, writes the entries that differ and flips EPOCH: no program load, no verifier. The log line comes after the state file, the counter fold (an RCU grace period) and the linter, which the service runs after the swap; the old rule set stays in force until the swap, so enforcement never stalls.\n"
    );
    Ok(())
}
