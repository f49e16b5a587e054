//! A recompile after a small edit of the rule file (`egress run`'s reloads):
//! the last compile's output, renumbered, with only the destinations the
//! edited rules can reach computed again.
//!
//! Why this is exact. A destination `d`'s value depends only on the rules
//! whose destination contains `d` (its `R(d)`, mod.rs), their order and
//! contents. An edit takes out and puts in rules whose destination prefixes
//! are `P`; a destination not inside any `p` of `P` has the same `R(d)` as
//! before, its rules renumbered in order, so its value is the old one
//! renumbered. The destinations inside `P` (old and new ones) are computed
//! again over the rules that nest with `P` (those containing a `p` are the
//! ancestors the chain of enclosing destinations needs; those inside, the
//! destinations themselves), which gives them what a whole compile would.
//!
//! New candidate lists, PAIR classes and DST_CLASSES values are appended; what
//! only the old values used stays, unreachable, until the next whole compile
//! (the caller bounds that growth). The flat tables of a family the edit
//! reaches are built again from its destinations.

use egress_common::{DST_SRC_ANY, DstValue, INLINE_LIST, Lists, NO_LIST, PCLASS_COUNT};
use foldhash::{HashMap, HashSet};

use super::{
    Compiled, Prefix, append_list_slots,
    family::{Interner, compile_family, prefix_iter},
    flat,
    ports::{PCLASSES_V4, PCLASSES_V6, list_slot},
};
use crate::rules::{Rule, RuleSet};

/// An edit of a rule file: the rules at positions `at..at + removed.len()`
/// of the last rule set were replaced by `rs.rules[at..at + added]`.
pub struct Edit<'a> {
    pub at: usize,
    pub removed: &'a [Rule],
    pub added: usize,
}

/// A recomputed destination, its value (the recompile's own ids), and its old
/// value and its enclosing destination's (where its lists may be already).
type Fresh = (Prefix, DstValue, [Option<DstValue>; 2]);

/// Most rules an edit may take out and put in for this path.
const MAX_EDIT_RULES: usize = 64;

/// Most destination prefixes those rules may have: every destination prefix
/// of the rule set is checked against each of them (a set of a million
/// entries elsewhere in the file: 16 million checks, some 100 ms), and a rule
/// naming a large set reaches most destinations anyway.
const MAX_EDIT_PREFIXES: usize = 16;

/// What a recompile did (the service's log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recompiled {
    /// Destinations computed again.
    pub destinations: usize,
    /// Rules that nest with the edited ones (the recompile's input).
    pub rules: usize,
}

/// `prev` (the compile of the rule set before `edit`, consumed: a copy of a
/// 100k-rule compile is milliseconds) brought up to `rs`, or
/// `None` when the edit is not one this path takes (too large, rules by
/// name, a destination every packet reaches, a table past its capacity): the
/// caller compiles the whole rule set, which also says what is wrong.
pub fn recompile(prev: Compiled, rs: &RuleSet, edit: &Edit<'_>) -> Option<(Compiled, Recompiled)> {
    let added = rs.rules.get(edit.at..edit.at + edit.added)?;
    let old_len = (rs.rules.len() + edit.removed.len()).checked_sub(edit.added)?;
    if prev.counter_slots as usize != old_len + 1
        || prev.default_action != rs.default_code()
        || edit.removed.len() + edit.added > MAX_EDIT_RULES
        || edit.removed.iter().chain(added).any(|r| !r.fqdn.is_empty())
        || edit.removed.iter().chain(added).map(|r| r.dst.as_ref().map_or(1, Vec::len)).sum::<usize>() > MAX_EDIT_PREFIXES
    {
        return None;
    }
    let mut out = prev;
    renumber(&mut out, edit);
    out.counter_slots = rs.rules.len() as u32 + 1;
    let list_base = (out.list_slots.len() / PCLASS_COUNT as usize) as u32;
    let class_base = out.pair_classes;
    let mut lists = Interner { rules: &rs.rules, ids: HashMap::default(), lists: Vec::new() };
    let mut classes: HashMap<(Vec<u32>, Vec<u32>), u32> = HashMap::default();
    let mut done = Recompiled::default();
    let mut touched = [false; 2];
    // Per family: the recomputed destinations (local list and class ids) with
    // each one's old value, and the PAIR entries of their classes.
    let mut fresh: [Vec<Fresh>; 2] = [Vec::new(), Vec::new()];
    let mut fresh_pairs: [Vec<(u32, Prefix, Lists)>; 2] = [Vec::new(), Vec::new()];
    for v6 in [false, true] {
        let in_family = |r: &Rule| if v6 { r.families.v6 } else { r.families.v4 };
        let mut edited: Vec<Prefix> =
            edit.removed.iter().chain(added).filter(|r| in_family(r)).flat_map(|r| prefix_iter(&r.dst, v6)).collect();
        edited.sort_unstable();
        edited.dedup();
        if edited.is_empty() {
            continue;
        }
        if edited.iter().any(|p| p.len == 0) {
            // Every destination: a whole compile costs the same.
            return None;
        }
        let nests = |q: &Prefix| edited.iter().any(|p| p.contains(q) || q.contains(p));
        let related: Vec<&Rule> = rs.rules.iter().filter(|r| in_family(r) && prefix_iter(&r.dst, v6).any(|q| nests(&q))).collect();
        // Past half the rule set, a whole compile is about as quick.
        if related.len() > rs.rules.len() / 2 + 64 {
            return None;
        }
        done.rules += related.len();
        let (dsts, pairs, _) = compile_family(rs, &related, v6, false, &mut lists, &mut classes);
        let inside = |k: &Prefix| edited.iter().any(|p| p.contains(k));
        let table = if v6 { &mut out.dst_v6 } else { &mut out.dst_v4 };
        let old = |k: &Prefix| table.binary_search_by(|(q, _)| q.cmp(k)).ok().map(|i| table[i].1);
        // Each one's old value and its enclosing destination's: where its
        // lists may be found already (a new destination under a broad rule
        // inherits that rule's list).
        let f: Vec<Fresh> = dsts
            .into_iter()
            .filter(|(k, _)| inside(k))
            .map(|(k, v)| {
                let parent = (0..k.len).rev().find_map(|l| old(&k.truncate(l)));
                (k, v, [old(&k), parent])
            })
            .collect();
        let used: HashSet<u32> = f.iter().filter(|(_, v, _)| v.flags & DST_SRC_ANY == 0).map(|(_, v, _)| v.lists.own).collect();
        fresh_pairs[v6 as usize] = pairs.into_iter().filter(|(c, _, _)| used.contains(c)).collect();
        table.retain(|(k, _)| !inside(k));
        done.destinations += f.len();
        fresh[v6 as usize] = f;
        touched[v6 as usize] = true;
    }
    // Candidate lists: a recomputed destination whose list reads as its old
    // one did keeps the old id (a changed rule's neighbours, the lists of
    // broad rules above it); the others are appended.
    let mut ids: HashMap<u32, u32> = HashMap::default();
    for f in &fresh {
        for (_, v, olds) in f {
            if v.flags & DST_SRC_ANY == 0 {
                continue;
            }
            let cands: Vec<u32> = olds
                .iter()
                .flatten()
                .filter(|o| o.flags & DST_SRC_ANY != 0)
                .flat_map(|o| [o.lists.own, o.lists.inherited])
                .filter(|c| !sentinel(*c))
                .collect();
            for l in [v.lists.own, v.lists.inherited] {
                if sentinel(l) || ids.contains_key(&l) {
                    continue;
                }
                if let Some(&c) = cands.iter().find(|&&c| reads_as(rs, &lists.lists[l as usize], c, &out)) {
                    ids.insert(l, c);
                }
            }
        }
    }
    let mut wanted: Vec<u32> = fresh
        .iter()
        .flatten()
        .filter(|(_, v, _)| v.flags & DST_SRC_ANY != 0)
        .flat_map(|(_, v, _)| [v.lists.own, v.lists.inherited])
        .chain(fresh_pairs.iter().flatten().flat_map(|(_, _, l)| [l.own, l.inherited]))
        .filter(|l| !sentinel(*l) && !ids.contains_key(l))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut appended = Vec::with_capacity(wanted.len());
    for l in wanted {
        ids.insert(l, list_base + appended.len() as u32);
        appended.push(std::mem::take(&mut lists.lists[l as usize]));
    }
    append_list_slots(rs, &appended, &mut out);
    let list = |l: u32| if sentinel(l) { l } else { ids[&l] };
    let lists_of = |l: Lists| Lists { own: list(l.own), inherited: list(l.inherited), ..l };
    for (v6, f) in fresh.into_iter().enumerate() {
        let values = f.into_iter().map(|(k, v, _)| {
            let v = if v.flags & DST_SRC_ANY != 0 {
                DstValue { lists: lists_of(v.lists), ..v }
            } else {
                DstValue { lists: Lists { own: v.lists.own + class_base, ..v.lists }, ..v }
            };
            (k, v)
        });
        let table = if v6 == 1 { &mut out.dst_v6 } else { &mut out.dst_v4 };
        *table = merge(std::mem::take(table), values.collect());
    }
    let mut new_pairs = false;
    for (v6, pairs) in fresh_pairs.into_iter().enumerate() {
        let table = if v6 == 1 { &mut out.pair_v6 } else { &mut out.pair_v4 };
        for (c, s, l) in pairs {
            table.push((c + class_base, s, lists_of(l)));
            new_pairs = true;
        }
    }
    out.pair_classes += classes.len() as u32;
    out.within_caps().ok()?;
    // The index of DST_CLASSES' values still holds when no rule moved.
    let index = std::mem::take(&mut out.class_index);
    let mut ids = match flat::ClassIds::from_parts(std::mem::take(&mut out.dst_classes), index) {
        Ok(ids) => ids,
        Err(values) => flat::ClassIds::seeded(values),
    };
    if touched[0] {
        out.flat_v4 = flat::table_v4(&out.dst_v4, &mut ids).ok()?;
    }
    if touched[1] {
        out.flat_v6 = flat::table_v6(&out.dst_v6, &mut ids).ok()?;
    }
    (out.dst_classes, out.class_index) = ids.into_parts();
    if new_pairs {
        let mut ids = flat::ListIds::seeded(std::mem::take(&mut out.pair_lists));
        out.src_v4 = flat::sources_v4(&out.pair_v4, out.pair_classes, &mut ids).ok()?;
        out.src_v6 = flat::sources_v6(&out.pair_v6, out.pair_classes, &mut ids).ok()?;
        out.pair_lists = ids.values;
    }
    Some((out, done))
}

/// Two lists sorted by prefix, with no prefix in both, as one.
fn merge(a: Vec<(Prefix, DstValue)>, b: Vec<(Prefix, DstValue)>) -> Vec<(Prefix, DstValue)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => {
                if x.0 < y.0 {
                    a.next()
                } else {
                    b.next()
                }
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

/// Not a list id.
fn sentinel(id: u32) -> bool {
    id == NO_LIST || id == INLINE_LIST
}

/// Whether an interned candidate list (rule slots, sorted; the families it
/// serves) gives every packet of those families what list `id` of `c` gives:
/// the same LISTS slots and RANGES runs.
fn reads_as(rs: &RuleSet, (rules, fams): &(Vec<u32>, [bool; 2]), id: u32, c: &Compiled) -> bool {
    let rules: Vec<&Rule> = rules.iter().map(|&i| &rs.rules[i as usize - 1]).collect();
    let mut ranges = Vec::new();
    let v4 = PCLASSES_V4.iter().filter(|_| fams[0]);
    let v6 = PCLASSES_V6.iter().filter(|_| fams[1]);
    v4.chain(v6).all(|&pc| {
        ranges.clear();
        let new = list_slot(pc, &rules, &mut ranges);
        let Some(old) = c.list_slots.get((id * PCLASS_COUNT + pc as u32) as usize) else { return false };
        let run = c.ranges.get(old.start as usize..(old.start + old.count) as usize).unwrap_or_default();
        (new.count, new.no_l4_rule, new.no_l4_action) == (old.count, old.no_l4_rule, old.no_l4_action) && run == ranges.as_slice()
    })
}

/// Every rule slot in `c` moved to the edited rule set's numbering; the
/// slots of rules taken out become 0 (only unreachable entries hold them).
fn renumber(c: &mut Compiled, edit: &Edit<'_>) {
    let (at, gone, added) = (edit.at as u32, edit.removed.len() as u32, edit.added as u32);
    if gone == added {
        // A rule changed in place: no other rule moves, and the old values
        // that name it are all recomputed.
        return;
    }
    // The values change: their index is made again from them.
    c.class_index = HashMap::default();
    let slot = |i: u32| -> u32 {
        if i == 0 || i == u32::MAX || i <= at {
            i
        } else if i <= at + gone {
            0
        } else {
            i - gone + added
        }
    };
    let lists = |l: &mut Lists| {
        if l.own == INLINE_LIST {
            l.inline.rule = slot(l.inline.rule);
        }
        l.inherited_first = slot(l.inherited_first);
    };
    let dst = |v: &mut DstValue| {
        if v.flags & DST_SRC_ANY != 0 {
            lists(&mut v.lists);
        }
    };
    c.dst_v4.iter_mut().chain(c.dst_v6.iter_mut()).for_each(|(_, v)| dst(v));
    c.dst_classes.iter_mut().for_each(dst);
    c.pair_v4.iter_mut().chain(c.pair_v6.iter_mut()).for_each(|(_, _, l)| lists(l));
    c.pair_lists.iter_mut().for_each(lists);
    c.list_slots.iter_mut().for_each(|s| s.no_l4_rule = slot(s.no_l4_rule));
    c.ranges.iter_mut().for_each(|r| r.rule = slot(r.rule));
    for f in &mut c.fqdn {
        f.first_rule = slot(f.first_rule);
        dst(&mut f.class.v4);
        dst(&mut f.class.v6);
    }
}
