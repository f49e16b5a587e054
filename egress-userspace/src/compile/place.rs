//! Where a compiled rule set goes in maps of two halves (egress-common's
//! halves.rs). Pure: sizes the halves and rewrites every index the program
//! follows (chunks, buckets, classes, lists, ranges) as an absolute index into
//! its half, so the program adds a base only at the DIR roots and counters.

use egress_common::{
    DIR_BUCKET, DIR_CHUNK, DIR_CLASS, DST_SRC_ANY, DirEntry, DstValue, INLINE_LIST, ListSlot, Lists, NO_LIST, PCLASS_COUNT,
};
use serde::{Deserialize, Serialize};

use super::Compiled;

/// Entries per half of each rule map, and counter slots per half.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub dir_v4: u32,
    pub span_v4: u32,
    pub dir_v6: u32,
    pub span_v6: u32,
    pub dst_classes: u32,
    pub sdir_v4: u32,
    pub sspan_v4: u32,
    pub sdir_v6: u32,
    pub sspan_v6: u32,
    pub pair_lists: u32,
    /// LISTS entries (a multiple of `PCLASS_COUNT`: one run per list id).
    pub lists: u32,
    pub ranges: u32,
    pub counters: u32,
}

/// Room left in a half for later rule sets to grow into: an eighth, and at
/// least `unit` entries (a DIR chunk, or a few values).
fn room(n: usize, unit: u32) -> u32 {
    let n = n as u32;
    n.saturating_add((n / 8).max(unit)).max(1)
}

impl Caps {
    /// Halves sized for `c` with room to grow.
    pub fn for_compiled(c: &Compiled) -> Caps {
        let chunk = egress_common::DIR_CHUNK_LEN * 4;
        let lists = room(c.list_slots.len(), 64 * PCLASS_COUNT);
        // One size for both families' SDIR: a destination class (shared by
        // the families in DST_CLASSES) names its top entry in either.
        let sdir = room(c.src_v4.dir.len(), chunk).max(room(c.src_v6.dir.len(), chunk));
        Caps {
            dir_v4: room(dir_len(&c.flat_v4.dir), chunk),
            span_v4: room(c.flat_v4.spans.len(), 64),
            dir_v6: room(dir_len(&c.flat_v6.dir), chunk),
            span_v6: room(c.flat_v6.spans.len(), 64),
            dst_classes: room(c.dst_classes.len(), 64),
            sdir_v4: sdir,
            sspan_v4: room(c.src_v4.spans.len(), 64),
            sdir_v6: sdir,
            sspan_v6: room(c.src_v6.spans.len(), 64),
            pair_lists: room(c.pair_lists.len(), 64),
            lists: lists.div_ceil(PCLASS_COUNT) * PCLASS_COUNT,
            ranges: room(c.ranges.len(), 256),
            counters: room(c.counter_slots as usize, 64),
        }
    }

    /// The first map of `c` that does not fit in a half, if any.
    pub fn overflow(&self, c: &Compiled) -> Option<&'static str> {
        use egress_common::*;
        [
            (MAP_DIR_V4, dir_len(&c.flat_v4.dir), self.dir_v4),
            (MAP_SPAN_V4, c.flat_v4.spans.len(), self.span_v4),
            (MAP_DIR_V6, dir_len(&c.flat_v6.dir), self.dir_v6),
            (MAP_SPAN_V6, c.flat_v6.spans.len(), self.span_v6),
            (MAP_DST_CLASSES, c.dst_classes.len(), self.dst_classes),
            (MAP_SDIR_V4, c.src_v4.dir.len(), self.sdir_v4),
            (MAP_SSPAN_V4, c.src_v4.spans.len(), self.sspan_v4),
            (MAP_SDIR_V6, c.src_v6.dir.len(), self.sdir_v6),
            (MAP_SSPAN_V6, c.src_v6.spans.len(), self.sspan_v6),
            (MAP_PAIR_LISTS, c.pair_lists.len(), self.pair_lists),
            (MAP_LISTS, c.list_slots.len(), self.lists),
            (MAP_RANGES, c.ranges.len(), self.ranges),
            (MAP_COUNTERS, c.counter_slots as usize, self.counters),
        ]
        .into_iter()
        .find(|(_, n, cap)| *n > *cap as usize)
        .map(|(m, _, _)| m)
    }

    /// The twelve rule maps, each with its entries per half (load.rs sizes
    /// the maps by it; the dataplane's fill.rs pairs each map with its entries).
    pub fn rule_maps(&self) -> [(&'static str, u32); 12] {
        use egress_common::*;
        [
            (MAP_DIR_V4, self.dir_v4),
            (MAP_SPAN_V4, self.span_v4),
            (MAP_DIR_V6, self.dir_v6),
            (MAP_SPAN_V6, self.span_v6),
            (MAP_DST_CLASSES, self.dst_classes),
            (MAP_SDIR_V4, self.sdir_v4),
            (MAP_SSPAN_V4, self.sspan_v4),
            (MAP_SDIR_V6, self.sdir_v6),
            (MAP_SSPAN_V6, self.sspan_v6),
            (MAP_PAIR_LISTS, self.pair_lists),
            (MAP_LISTS, self.lists),
            (MAP_RANGES, self.ranges),
        ]
    }

    /// Where half `half` (0 or 1) starts in each map.
    pub fn bases(&self, half: u32) -> Caps {
        let h = half & 1;
        Caps {
            dir_v4: self.dir_v4 * h,
            span_v4: self.span_v4 * h,
            dir_v6: self.dir_v6 * h,
            span_v6: self.span_v6 * h,
            dst_classes: self.dst_classes * h,
            sdir_v4: self.sdir_v4 * h,
            sspan_v4: self.sspan_v4 * h,
            sdir_v6: self.sdir_v6 * h,
            sspan_v6: self.sspan_v6 * h,
            pair_lists: self.pair_lists * h,
            lists: self.lists * h,
            ranges: self.ranges * h,
            counters: self.counters * h,
        }
    }
}

/// The rule maps' entries for one half, indexes absolute (the dataplane's
/// fill.rs names each field's map).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placed {
    pub dir_v4: Vec<DirEntry>,
    pub span_v4: Vec<egress_common::SpanV4>,
    pub dir_v6: Vec<DirEntry>,
    pub span_v6: Vec<egress_common::SpanV6>,
    pub dst_classes: Vec<DstValue>,
    pub sdir_v4: Vec<DirEntry>,
    pub sspan_v4: Vec<egress_common::SpanV4>,
    pub sdir_v6: Vec<DirEntry>,
    pub sspan_v6: Vec<egress_common::SpanV6>,
    pub pair_lists: Vec<Lists>,
    pub lists: Vec<ListSlot>,
    /// As compiled: rule numbers are relative (the program adds the counters' base).
    pub ranges: Vec<egress_common::PortRange>,
}

/// Entries a destination table takes in its half: at least the whole root,
/// since a family without rules must still answer "no class" there rather
/// than whatever an earlier rule set left in the idle half.
fn dir_len(dir: &[DirEntry]) -> usize {
    dir.len().max(egress_common::DIR_ROOT_LEN as usize)
}

/// A destination table moved into a half, its root complete (see [`dir_len`]).
fn dir(d: &[DirEntry], dir: u32, spans: u32, answers: u32) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = d.iter().map(|e| entry(e, dir, spans, answers)).collect();
    out.resize(dir_len(d), DirEntry::default());
    out
}

/// A nonzero answer index moved by `base` (0 stays 0: "none").
fn answer(v: u32, base: u32) -> u32 {
    if v == 0 { 0 } else { v + base }
}

/// A DIR entry moved into a half: chunks into its DIR, buckets into its spans,
/// answers into its answer map.
fn entry(e: &DirEntry, dir: u32, spans: u32, answers: u32) -> DirEntry {
    match e.kind() {
        DIR_CHUNK => DirEntry { val: e.val + dir, aux: e.aux },
        DIR_BUCKET => DirEntry { val: e.val + spans, aux: e.aux },
        DIR_CLASS => DirEntry { val: answer(e.val, answers), aux: e.aux },
        _ => *e,
    }
}

fn list(id: u32, base: u32) -> u32 {
    if id == NO_LIST || id == INLINE_LIST { id } else { id + base }
}

fn lists(l: &Lists, base: u32) -> Lists {
    Lists { own: list(l.own, base), inherited: list(l.inherited, base), ..*l }
}

/// `c`'s entries as they sit in the half whose bases are `b` (from
/// [`Caps::bases`]; all 0: a load's half 0, as compiled, with DIR roots
/// complete). RANGES needs no rewrite: rule numbers are relative (the program
/// adds the counters' base).
pub fn place(c: &Compiled, b: &Caps) -> Placed {
    let list_base = b.lists / PCLASS_COUNT;
    Placed {
        dir_v4: dir(&c.flat_v4.dir, b.dir_v4, b.span_v4, b.dst_classes),
        span_v4: c.flat_v4.spans.iter().map(|s| egress_common::SpanV4 { class: answer(s.class, b.dst_classes), ..*s }).collect(),
        dir_v6: dir(&c.flat_v6.dir, b.dir_v6, b.span_v6, b.dst_classes),
        span_v6: c.flat_v6.spans.iter().map(|s| egress_common::SpanV6 { class: answer(s.class, b.dst_classes), ..*s }).collect(),
        dst_classes: c
            .dst_classes
            .iter()
            .map(|d| {
                if d.flags & DST_SRC_ANY != 0 {
                    DstValue { lists: lists(&d.lists, list_base), ..*d }
                } else {
                    // A class of stage 2: its top entry in SDIR_V4/SDIR_V6,
                    // whose halves start at the same offset (Caps::for_compiled).
                    DstValue { lists: Lists { own: d.lists.own + b.sdir_v4, ..d.lists }, ..*d }
                }
            })
            .collect(),
        sdir_v4: c.src_v4.dir.iter().map(|e| entry(e, b.sdir_v4, b.sspan_v4, b.pair_lists)).collect(),
        sspan_v4: c.src_v4.spans.iter().map(|s| egress_common::SpanV4 { class: answer(s.class, b.pair_lists), ..*s }).collect(),
        sdir_v6: c.src_v6.dir.iter().map(|e| entry(e, b.sdir_v6, b.sspan_v6, b.pair_lists)).collect(),
        sspan_v6: c.src_v6.spans.iter().map(|s| egress_common::SpanV6 { class: answer(s.class, b.pair_lists), ..*s }).collect(),
        pair_lists: c.pair_lists.iter().map(|l| lists(l, list_base)).collect(),
        lists: c.list_slots.iter().map(|s| if s.count == 0 { *s } else { ListSlot { start: s.start + b.ranges, ..*s } }).collect(),
        ranges: c.ranges.clone(),
    }
}
