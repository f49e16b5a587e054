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

/// The rule set with one rule added first (a destination no other rule
/// names, a port of its own): every other rule moves one slot, the worst case
/// of an insert. The base text is the same set with it removed.
fn one_added(text: &str) -> anyhow::Result<String> {
    let at = text.find("[[rule]]").ok_or_else(|| anyhow::anyhow!("no rule"))?;
    let rule = "[[rule]]\nname = \"bench-added\"\naction = \"deny\"\ndst = \"10.255.254.0/24\"\nprotocol = \"tcp\"\nports = \"4444\"\n";
    Ok(format!("{}{rule}{}", &text[..at], &text[at..]))
}

/// One kind of change, measured over several reloads.
#[derive(Default)]
struct Kind {
    total: Vec<f64>,
    logged: Vec<f64>,
    apply: Vec<f64>,
    flip: Vec<f64>,
    paths: Vec<String>,
}

pub fn reload_part(sizes: &[usize], rounds: usize, md: &mut String, sp: &mut crate::report::SpeedResult) -> anyhow::Result<()> {
    let _ = writeln!(md, "## 4. `egress run`: from a rule file change to the new rules enforced\n");
    let _ = writeln!(
        md,
        "| rules | one rule | ms to enforcement (spread) | path | of which the idle half's write and flip ms | ms to the log line (state file, counter fold, lint) | of which apply ms (after parse + compile) |"
    );
    let _ = writeln!(md, "| ---: | --- | ---: | --- | ---: | ---: | ---: |");
    for &n in sizes {
        let pair = Pair::new("rl")?;
        let text = ruleset_gen::realistic(n, flows_for(n), 7);
        let (changed, added) = (one_changed(&text)?, one_added(&text)?);
        let rules = temp_file("rules.toml", &text);
        let cfg = temp_file("egress.toml", &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\n", pair.a_if, rules.display()));
        let d = Daemon::start(&pair.a, &cfg, &[]);
        d.wait_for("applied", 1, |v| v["message"] == "rules applied");
        let mut kinds: Vec<(&str, Kind)> = vec![("changed", Kind::default()), ("added", Kind::default()), ("removed", Kind::default())];
        // Alternating: the changed rule and back (both count as changed),
        // then the added rule and its removal.
        let steps: Vec<(&str, &String, usize)> = (0..2 * rounds)
            .map(|r| if r % 2 == 0 { ("changed", &changed, n) } else { ("changed", &text, n) })
            .chain((0..2 * rounds).map(|r| if r % 2 == 0 { ("added", &added, n + 1) } else { ("removed", &text, n) }))
            .collect();
        for (r, (kind, body, count)) in steps.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(300));
            let t0 = now_day_secs();
            replace_file(&rules, body);
            let v = d.wait_for("replaced", r + 1, |v| v["message"] == "rules replaced");
            let k = &mut kinds.iter_mut().find(|(name, _)| name == kind).ok_or_else(|| anyhow::anyhow!("kind"))?.1;
            let at = v["timestamp"].as_str().and_then(day_secs).ok_or_else(|| anyhow::anyhow!("no timestamp in {v}"))?;
            k.logged.push((at - t0) * 1e3);
            let after = v["after_enforced_us"].as_f64().ok_or_else(|| anyhow::anyhow!("no after_enforced_us in {v}"))?;
            k.total.push((at - t0) * 1e3 - after / 1e3);
            k.apply.push(v["ms"].as_f64().unwrap_or(f64::NAN));
            k.flip.push(v["enforced_us"].as_f64().map_or(f64::NAN, |us| us / 1e3));
            let path = format!("{}, {} compile", v["path"].as_str().unwrap_or("?"), v["compile"].as_str().unwrap_or("?"));
            if !k.paths.contains(&path) {
                k.paths.push(path);
            }
            let kept = if *kind == "changed" { *count as u64 - 1 } else { n as u64 };
            if v["kept"].as_u64() != Some(kept) || v["rules"].as_u64() != Some(*count as u64) {
                anyhow::bail!("{kind}: expected {count} rules, {kept} kept: {v}");
            }
        }
        for (kind, k) in &kinds {
            let (t, a, f) = (median(&mut k.total.clone()), median(&mut k.apply.clone()), median(&mut k.flip.clone()));
            let l = median(&mut k.logged.clone());
            eprintln!(
                "reload {n} rules, 1 {kind}: {t:.0} ms to enforcement, {l:.0} ms to the log line (apply {a:.0} ms, write and flip {f:.1} ms, {:?})",
                k.paths
            );
            let _ =
                writeln!(md, "| {n} | {kind} | {t:.0} ({}) | {} | {f:.1} | {l:.0} | {a:.0} |", spread_p(&k.total, 0), k.paths.join("; "));
            sp.reloads.push((n, t, format!("{kind}: {}", k.paths.join("; "))));
        }
        drop(d);
    }
    let _ = writeln!(
        md,
        "\nMedians of {} reloads of each kind: `changed` alternates one rule's ports between two values (so that rule restarts its counters and the other n-1 keep theirs); `added` puts a rule with a destination of its own first in the file (every other rule moves one slot: an insert's worst case), and `removed` takes it out again. To enforcement: from the rename into place (the watcher reacts at once to it) to the swap, which the service's log line places (`after_enforced_us`); it includes reading and hashing the whole file, parsing the rules that changed (the service takes the others over from the file's last parse) and compiling: `incremental` recompiles only the destinations inside the changed rule's prefixes (compile/incremental.rs), `whole` the whole rule set (the first reload, or a recompile that would not fit the loaded maps). A hot reload (path `hot`) compares the new rule set with the idle half of the loaded program's maps, writes the entries that differ and flips EPOCH: no program load, no verifier. The log line comes after the state file, the counter fold (an RCU grace period) and the linter, which the service runs after the swap; the old rule set stays in force until the swap, so enforcement never stalls.\n",
        2 * rounds
    );
    Ok(())
}
