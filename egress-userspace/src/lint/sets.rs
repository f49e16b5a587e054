//! The linter's warnings about sets (`[[set]]`):
//!
//! - `empty-set`: a set with no entry (an empty file, a country the database
//!   has no network for): the rules naming it match nothing through it.
//! - `unused-set`: a set no rule names.
//! - `never-matches`: a rule whose sets leave it no address of a family the
//!   rest of the rule allows (an empty set, a set of IPv6 addresses in a rule
//!   with an IPv4 source): it matches nothing until its sets change.
//! - `set-entry-covered`: an entry of a set in a rule that an earlier rule of
//!   the other action covers entirely (a blocklist entry an earlier allow lets
//!   through): the rule never applies to that entry.

use super::{
    Linter, Warning,
    region::{Budget, CLASSES, Cover, Pfx, Region, Shape, class_l4, cover, in_class, l4_overlaps},
};
use crate::rules::{Action, RuleSet};

/// Entries named per warning before "and N more".
const NAMED: usize = 3;

/// The file-wide set warnings: empty and unused sets.
pub(super) fn set_warnings(rs: &RuleSet) -> Vec<Warning> {
    let mut out = Vec::new();
    for s in &rs.sets {
        let w = |kind, message| Warning { line: s.line, rule: None, kind, message };
        if s.entries.is_empty() {
            out.push(w("empty-set", format!("set '{}' is empty ({}): rules that name it match nothing through it", s.name, s.describe())));
        }
        if !rs.rules.iter().any(|r| r.sets.src.contains(&s.name) || r.sets.dst.contains(&s.name)) {
            out.push(w("unused-set", format!("set '{}' is not named by any rule (write \"@{}\" in a src or dst)", s.name, s.name)));
        }
    }
    out
}

impl Linter<'_> {
    /// `never-matches` for a rule its sets leave without a family.
    pub(super) fn never_matches(&self, i: usize) -> Option<Warning> {
        let r = &self.rs.rules[i];
        if r.families.v4 || r.families.v6 {
            return None;
        }
        let sets: Vec<String> = r.sets.src.iter().chain(&r.sets.dst).map(|s| format!("@{s}")).collect();
        Some(Warning {
            line: r.line,
            rule: Some(r.name.clone()),
            kind: "never-matches",
            message: format!(
                "{} matches nothing at present: its sets ({}) hold no address of a family the rest of the rule allows",
                super::named(r),
                sets.join(", ")
            ),
        })
    }

    /// `set-entry-covered` for rule `i`, given the earlier rules that overlap
    /// it in each family (positions, ascending).
    pub(super) fn covered_entries(&self, i: usize, earlier: &[Vec<usize>; 2], budget: &mut Budget) -> Option<Warning> {
        let rs = self.rs;
        let r = &rs.rules[i];
        if r.sets.src.is_empty() && r.sets.dst.is_empty() {
            return None;
        }
        let other = |j: usize| rs.rules[j].action != r.action;
        let mut covered: Vec<(String, String)> = Vec::new();
        let mut checked = std::collections::HashSet::new();
        for (f, earlier) in self.fams.iter().zip(earlier) {
            let Some(me) = &f.shapes[i] else { continue };
            let cands: Vec<usize> = earlier.iter().copied().filter(|&j| other(j)).collect();
            if cands.is_empty() {
                continue;
            }
            // Only entries that overlap an earlier rule of the other action can
            // be covered by them: found by address in each (sorted) set.
            for (dst_side, names) in [(true, &r.sets.dst), (false, &r.sets.src)] {
                for name in names.iter() {
                    let Some(set) = rs.set(name) else { continue };
                    for &j in &cands {
                        let Some(e) = &f.shapes[j] else { continue };
                        for &p in if dst_side { e.dst.iter() } else { e.src.iter() } {
                            for k in overlapping(&set.entries, p, f.v6) {
                                if !checked.insert((dst_side, name.as_str(), k)) {
                                    continue;
                                }
                                let entry = Pfx::of(&set.entries[k]);
                                match self.entry_covered(r, me, f.v6, &cands, entry, dst_side, budget) {
                                    Some(true) => covered.push((set.entries[k].to_string(), format!("@{name}, {}", set.origin(k)))),
                                    Some(false) => {}
                                    None => return None,
                                }
                            }
                        }
                    }
                }
            }
        }
        if covered.is_empty() {
            return None;
        }
        let word = if r.action == Action::Deny { "allow" } else { "deny" };
        let mut names: Vec<String> = covered.iter().take(NAMED).map(|(e, o)| format!("{e} ({o})")).collect();
        if covered.len() > NAMED {
            names.push(format!("and {} more", covered.len() - NAMED));
        }
        Some(Warning {
            line: r.line,
            rule: Some(r.name.clone()),
            kind: "set-entry-covered",
            message: format!(
                "{} never applies to set entr{} {}: earlier {word} rules match every packet it would",
                super::named(r),
                if covered.len() == 1 { "y" } else { "ies" },
                names.join(", ")
            ),
        })
    }

    /// Whether the earlier rules `cands` cover rule `r` restricted to one set
    /// entry (on the destination or the source side); None when out of budget.
    #[allow(clippy::too_many_arguments)]
    fn entry_covered(
        &self,
        r: &crate::rules::Rule,
        me: &Shape,
        v6: bool,
        cands: &[usize],
        entry: Pfx,
        dst_side: bool,
        budget: &mut Budget,
    ) -> Option<bool> {
        let f = &self.fams[v6 as usize];
        let others: &[Pfx] = if dst_side { &me.src } else { &me.dst };
        for c in CLASSES {
            if !in_class(r, c, v6) {
                continue;
            }
            let shapes: Vec<&Shape> =
                cands.iter().filter(|&&j| f.classes[j] & (1 << c as u8) != 0).filter_map(|&j| f.shapes[j].as_ref()).collect();
            let cl = class_l4(c);
            for &mine in me.l4.iter().filter(|&&m| l4_overlaps(cl, m)) {
                let l = (mine.0.max(cl.0), mine.1.min(cl.1));
                for &o in others {
                    let (s, d) = if dst_side { (o, entry) } else { (entry, o) };
                    match cover(Region { s, d, l }, &shapes, budget) {
                        Cover::Covered => {}
                        Cover::Uncovered(_) => return Some(false),
                        Cover::Unknown => return None,
                    }
                }
            }
        }
        Some(true)
    }
}

/// Positions of the entries (sorted, disjoint, IPv4 first) of family `v6` that
/// overlap prefix `p`: the one containing it, or the run inside it.
fn overlapping(entries: &[ipnet::IpNet], p: Pfx, v6: bool) -> std::ops::Range<usize> {
    let key = |n: &ipnet::IpNet| (n.addr().is_ipv6(), Pfx::of(n).addr);
    let start = entries.partition_point(|n| key(n) < (v6, p.addr));
    // An entry starting before p, or where p starts, may contain it.
    for k in [start.checked_sub(1), Some(start)].into_iter().flatten() {
        if entries.get(k).is_some_and(|n| n.addr().is_ipv6() == v6 && Pfx::of(n).contains(p)) {
            return k..k + 1;
        }
    }
    let end = start + entries[start..].partition_point(|n| n.addr().is_ipv6() == v6 && p.contains(Pfx::of(n)));
    start..end
}
