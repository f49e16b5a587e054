//! Stage 3 (ports) of the compiler: which rules of a candidate list decide
//! some packet, and a list's first-match intervals per protocol class (LISTS
//! and RANGES). Pure.

use egress_common::{InlineRule, ListSlot, PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, PortRange};

use crate::rules::{Protocol, Rule};

/// The protocol classes a packet of a family can have.
pub(super) const PCLASSES_V4: [u8; 4] = [PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, PCLASS_ICMP];
pub(super) const PCLASSES_V6: [u8; 4] = [PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, PCLASS_ICMPV6];

pub(super) fn applies_to_class(r: &Rule, pclass: u8) -> bool {
    match r.protocol {
        Protocol::All => true,
        Protocol::Tcp => pclass == PCLASS_TCP,
        Protocol::Udp => pclass == PCLASS_UDP,
        Protocol::Icmp => pclass == PCLASS_ICMP,
        Protocol::Icmpv6 => pclass == PCLASS_ICMPV6,
    }
}

/// A rule in the form the program checks in place (one L4 interval only: a
/// rule with a port list of several intervals goes through LISTS and RANGES).
pub(super) fn inline_rule(r: &Rule) -> InlineRule {
    let classes = (0..=PCLASS_ICMPV6).filter(|&c| applies_to_class(r, c)).fold(0u8, |m, c| m | 1 << c);
    let (lo, hi) = r.l4_ranges()[0];
    InlineRule { rule: r.index, action: r.code() as u8, classes, l4_any: r.l4_any() as u8, _pad: 0, lo, hi }
}

/// The rules of a candidate list (sorted slots) that decide some packet: per
/// protocol class of the family, the winners of the first-match painting of
/// their L4 intervals and the first rule without an L4 condition. Dropping the
/// others changes no lookup (a rule that wins nowhere is never the first match).
pub(super) fn decisive(rules: &[Rule], list: Vec<u32>, v6: bool) -> Vec<u32> {
    let rule = |i: u32| &rules[i as usize - 1];
    let mut keep = vec![false; list.len()];
    for c in if v6 { PCLASSES_V6 } else { PCLASSES_V4 } {
        let applicable: Vec<usize> = (0..list.len()).filter(|&k| applies_to_class(rule(list[k]), c)).collect();
        if let Some(&k) = applicable.iter().find(|&&k| rule(list[k]).l4_any()) {
            keep[k] = true;
        }
        let (intervals, owner) = flat_intervals(applicable.iter().map(|&k| rule(list[k])));
        for (_, _, w) in first_match_intervals(&intervals) {
            keep[applicable[owner[w]]] = true;
        }
    }
    list.into_iter().zip(keep).filter(|(_, k)| *k).map(|(i, _)| i).collect()
}

/// One candidate list's LISTS slot for one protocol class; its intervals are
/// appended to `ranges`.
pub(super) fn list_slot(pclass: u8, rules: &[&Rule], ranges: &mut Vec<PortRange>) -> ListSlot {
    let applicable: Vec<&&Rule> = rules.iter().filter(|r| applies_to_class(r, pclass)).collect();
    let mut slot = ListSlot { start: ranges.len() as u32, ..ListSlot::default() };
    if let Some(r) = applicable.iter().find(|r| r.l4_any()) {
        slot.no_l4_rule = r.index;
        slot.no_l4_action = r.code();
    }
    let (intervals, owner) = flat_intervals(applicable.iter().map(|r| **r));
    for (lo, hi, k) in first_match_intervals(&intervals) {
        let r = applicable[owner[k]];
        ranges.push(PortRange { lo, hi, rule: r.index, action: r.code() });
    }
    slot.count = ranges.len() as u32 - slot.start;
    if slot.count == 0 {
        slot.start = 0;
    }
    slot
}

/// The L4 intervals of rules in order, and for each the position of its rule:
/// a port list's intervals are consecutive, so the first interval covering a
/// value is the first rule's.
pub(super) fn flat_intervals<'a>(rules: impl Iterator<Item = &'a Rule>) -> (Vec<(u32, u32)>, Vec<usize>) {
    let (mut iv, mut owner) = (Vec::new(), Vec::new());
    for (k, r) in rules.enumerate() {
        for &(a, b) in r.l4_ranges().iter() {
            iv.push((a as u32, b as u32));
            owner.push(k);
        }
    }
    (iv, owner)
}

/// Resolves first match over inclusive intervals of [0, 65535]: returns disjoint,
/// sorted (lo, hi, winner) where winner is the index of the first interval that
/// covers that stretch; adjacent stretches with the same winner are merged.
/// O(n log n): each elementary segment is painted once (union-find skips painted ones).
pub fn first_match_intervals(intervals: &[(u32, u32)]) -> Vec<(u16, u16, usize)> {
    let mut cuts: Vec<u32> = intervals.iter().flat_map(|&(a, b)| [a, b + 1]).collect();
    cuts.push(0);
    cuts.push(1 << 16);
    cuts.sort_unstable();
    cuts.dedup();
    let segs = cuts.len() - 1;
    let mut winner: Vec<Option<usize>> = vec![None; segs];
    // next[j]: the first segment >= j that is not painted yet (segs = none).
    let mut next: Vec<usize> = (0..=segs).collect();
    fn find(next: &mut [usize], mut j: usize) -> usize {
        let mut root = j;
        while next[root] != root {
            root = next[root];
        }
        while next[j] != root {
            let up = next[j];
            next[j] = root;
            j = up;
        }
        root
    }
    for (k, &(a, b)) in intervals.iter().enumerate() {
        let first = cuts.partition_point(|&c| c < a);
        let end = cuts.partition_point(|&c| c < b + 1);
        let mut j = find(&mut next, first);
        while j < end {
            winner[j] = Some(k);
            next[j] = j + 1;
            j = find(&mut next, j + 1);
        }
    }
    let mut out: Vec<(u16, u16, usize)> = Vec::new();
    for j in 0..segs {
        let Some(k) = winner[j] else { continue };
        let (lo, hi) = (cuts[j] as u16, (cuts[j + 1] - 1) as u16);
        match out.last_mut() {
            Some(last) if last.2 == k && last.1 as u32 + 1 == lo as u32 => last.1 = hi,
            _ => out.push((lo, hi, k)),
        }
    }
    out
}
