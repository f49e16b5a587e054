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
use ipnet::IpNet;

use super::{
    Compiled, Prefix, append_list_slots,
    family::{Interner, compile_family},
    flat,
};
use crate::rules::{Rule, RuleSet};

/// An edit of a rule file: the rules at positions `at..at + removed.len()`
/// of the last rule set were replaced by `rs.rules[at..at + added]`.
pub struct Edit<'a> {
    pub at: usize,
    pub removed: &'a [Rule],
    pub added: usize,
}

/// Most rules an edit may take out and put in for this path.
const MAX_EDIT_RULES: usize = 64;

/// What a recompile did (the service's log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recompiled {
    /// Destinations computed again.
    pub destinations: usize,
    /// Rules that nest with the edited ones (the recompile's input).
    pub rules: usize,
}

/// `prev` (the compile of the rule set before `edit`) brought up to `rs`, or
/// `None` when the edit is not one this path takes (too large, rules by
/// name, a destination every packet reaches, a table past its capacity): the
/// caller compiles the whole rule set, which also says what is wrong.
pub fn recompile(prev: &Compiled, rs: &RuleSet, edit: &Edit<'_>) -> Option<(Compiled, Recompiled)> {
    let added = rs.rules.get(edit.at..edit.at + edit.added)?;
    let old_len = (rs.rules.len() + edit.removed.len()).checked_sub(edit.added)?;
    if prev.counter_slots as usize != old_len + 1
        || prev.default_action != rs.default_code()
        || edit.removed.len() + edit.added > MAX_EDIT_RULES
        || edit.removed.iter().chain(added).any(|r| !r.fqdn.is_empty())
    {
        return None;
    }
    let mut out = prev.clone();
    renumber(&mut out, edit);
    out.counter_slots = rs.rules.len() as u32 + 1;
    let list_base = (out.list_slots.len() / PCLASS_COUNT as usize) as u32;
    let class_base = out.pair_classes;
    let mut lists = Interner { rules: &rs.rules, ids: HashMap::default(), lists: Vec::new() };
    let mut classes: HashMap<(Vec<u32>, Vec<u32>), u32> = HashMap::default();
    let mut done = Recompiled::default();
    let mut touched = [false; 2];
    let mut new_pairs = false;
    for v6 in [false, true] {
        let in_family = |r: &Rule| if v6 { r.families.v6 } else { r.families.v4 };
        let mut edited: Vec<Prefix> = edit.removed.iter().chain(added).filter(|r| in_family(r)).flat_map(|r| dst_prefixes(r, v6)).collect();
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
        let related: Vec<&Rule> = rs
            .rules
            .iter()
            .filter(|r| {
                in_family(r)
                    && match &r.dst {
                        None => true,
                        Some(v) => v.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).any(|n| nests(&Prefix::of(n))),
                    }
            })
            .collect();
        if related.len() > rs.rules.len() / 4 + 64 {
            return None;
        }
        done.rules += related.len();
        let (dsts, pairs, _) = compile_family(rs, &related, v6, false, &mut lists, &mut classes);
        let inside = |k: &Prefix| edited.iter().any(|p| p.contains(k));
        let fresh: Vec<(Prefix, DstValue)> =
            dsts.into_iter().filter(|(k, _)| inside(k)).map(|(k, v)| (k, offset_dst(v, list_base, class_base))).collect();
        let used: HashSet<u32> = fresh.iter().filter(|(_, v)| v.flags & DST_SRC_ANY == 0).map(|(_, v)| v.lists.own - class_base).collect();
        done.destinations += fresh.len();
        let (table, pair_table) = if v6 { (&mut out.dst_v6, &mut out.pair_v6) } else { (&mut out.dst_v4, &mut out.pair_v4) };
        table.retain(|(k, _)| !inside(k));
        *table = merge(std::mem::take(table), fresh);
        for (c, s, l) in pairs.into_iter().filter(|(c, _, _)| used.contains(c)) {
            pair_table.push((c + class_base, s, offset_lists(l, list_base)));
            new_pairs = true;
        }
        touched[v6 as usize] = true;
    }
    append_list_slots(rs, &lists.lists, &mut out);
    out.pair_classes += classes.len() as u32;
    out.within_caps().ok()?;
    let mut ids = flat::ClassIds::seeded(std::mem::take(&mut out.dst_classes));
    if touched[0] {
        out.flat_v4 = flat::table_v4(&out.dst_v4, &mut ids).ok()?;
    }
    if touched[1] {
        out.flat_v6 = flat::table_v6(&out.dst_v6, &mut ids).ok()?;
    }
    out.dst_classes = ids.values;
    if new_pairs {
        let mut ids = flat::ListIds::seeded(std::mem::take(&mut out.pair_lists));
        out.src_v4 = flat::sources_v4(&out.pair_v4, out.pair_classes, &mut ids).ok()?;
        out.src_v6 = flat::sources_v6(&out.pair_v6, out.pair_classes, &mut ids).ok()?;
        out.pair_lists = ids.values;
    }
    Some((out, done))
}

/// A rule's destination prefixes in one family (any: the /0).
fn dst_prefixes(r: &Rule, v6: bool) -> Vec<Prefix> {
    super::family::prefixes(&r.dst, v6)
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

fn offset_list(id: u32, base: u32) -> u32 {
    if id == NO_LIST || id == INLINE_LIST { id } else { id + base }
}

fn offset_lists(l: Lists, base: u32) -> Lists {
    Lists { own: offset_list(l.own, base), inherited: offset_list(l.inherited, base), ..l }
}

/// A value computed by the recompile, its ids moved past the last compile's.
fn offset_dst(v: DstValue, list_base: u32, class_base: u32) -> DstValue {
    if v.flags & DST_SRC_ANY != 0 {
        DstValue { lists: offset_lists(v.lists, list_base), ..v }
    } else {
        DstValue { lists: Lists { own: v.lists.own + class_base, ..v.lists }, ..v }
    }
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
