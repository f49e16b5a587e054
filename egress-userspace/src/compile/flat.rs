//! Stages 1 and 2 in flat arrays (egress-common's `flat.rs`): the compiler's
//! list of (destination prefix, value) per family, and of (class, source
//! prefix, lists) per family, become disjoint address spans, and the spans a
//! multibit trie of direct tables with short sorted buckets at the leaves. Pure.
//!
//! A DIR entry covers an aligned block of addresses. When one span covers the
//! whole block, the entry is that span's class. When a few do (at most
//! `bucket_max`), the entry is a bucket: those spans, the first clipped to the
//! block's start, binary-searched by the program. Otherwise the block gets a
//! chunk of 256 entries, one per value of its next address byte.

use std::hash::Hash;

use egress_common::{BUCKET_LIMIT, DIR_CHUNK_LEN, DIR_MAX_CHUNKS, DIR_ROOT_BITS, DIR_ROOT_LEN, DirEntry, DstValue, Lists, SpanV4, SpanV6};
use foldhash::HashMap;

use super::Prefix;

/// Longest bucket left unsplit: 8 spans, one 64-byte cache line of IPv4
/// spans, three of IPv6 ones (at 4, the realistic 100k-rule set needed 3,666
/// IPv6 chunks, 7 MiB, for pairs of nested prefixes; at 8, 292). Past it, a
/// chunk (2 KiB) answers in one access.
const BUCKET_MAX_V4: usize = 8;
const BUCKET_MAX_V6: usize = 8;

/// The values of DST_CLASSES (or PAIR_LISTS), interned across both families;
/// index 0 is "no rule's destination (source) contains the address" (its
/// value is never read).
pub struct Ids<T> {
    pub values: Vec<T>,
    ids: HashMap<T, u32>,
}

impl<T: Default + Copy + Hash + Eq> Default for Ids<T> {
    fn default() -> Ids<T> {
        Ids { values: vec![T::default()], ids: HashMap::default() }
    }
}

impl<T: Default + Copy + Hash + Eq> Ids<T> {
    pub fn new() -> Ids<T> {
        Ids::default()
    }
    /// The values and the index from value to id (kept by a compile for the
    /// next recompile).
    pub fn into_parts(self) -> (Vec<T>, HashMap<T, u32>) {
        (self.values, self.ids)
    }
    /// Ids from [`Ids::into_parts`]; `None` when the index does not cover the values.
    pub fn from_parts(values: Vec<T>, ids: HashMap<T, u32>) -> Result<Ids<T>, Vec<T>> {
        if ids.len() + 1 == values.len() { Ok(Ids { values, ids }) } else { Err(values) }
    }
    /// Ids that keep `values`' (a recompile appends to the last compile's).
    pub fn seeded(values: Vec<T>) -> Ids<T> {
        let mut ids: HashMap<T, u32> = HashMap::default();
        ids.reserve(values.len());
        for (k, v) in values.iter().enumerate().skip(1) {
            ids.entry(*v).or_insert(k as u32);
        }
        Ids { values, ids }
    }
    fn id(&mut self, v: &T) -> u32 {
        let n = self.values.len() as u32;
        let id = *self.ids.entry(*v).or_insert(n);
        if id == n {
            self.values.push(*v);
        }
        id
    }
}

/// One family's DIR and SPAN entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table<S> {
    pub dir: Vec<DirEntry>,
    pub spans: Vec<S>,
    /// Chunks below the root (for the memory figures).
    pub chunks: u32,
}

pub type ClassIds = Ids<DstValue>;
pub type ListIds = Ids<Lists>;

fn spans_v4(spans: Spans) -> Vec<SpanV4> {
    spans.into_iter().map(|(s, class)| SpanV4 { start: s as u32, class }).collect()
}

fn spans_v6(spans: Spans) -> Vec<SpanV6> {
    spans.into_iter().map(|(s, class)| SpanV6 { hi: (s >> 64) as u64, lo: s as u64, class, _pad: 0 }).collect()
}

/// A table that needs more than [`DIR_MAX_CHUNKS`] chunks even with buckets
/// of [`BUCKET_LIMIT`] spans: its name.
#[derive(Debug)]
pub struct TooCrowded(pub &'static str);

/// Stage 1, IPv4: DIR_V4 and SPAN_V4.
pub fn table_v4(dsts: &[(Prefix, DstValue)], ids: &mut ClassIds) -> Result<Table<SpanV4>, TooCrowded> {
    let (dir, spans, chunks) = build(dsts, 32, BUCKET_MAX_V4, ids).ok_or(TooCrowded(egress_common::MAP_DIR_V4))?;
    Ok(Table { dir, spans: spans_v4(spans), chunks })
}

/// Stage 1, IPv6: DIR_V6 and SPAN_V6.
pub fn table_v6(dsts: &[(Prefix, DstValue)], ids: &mut ClassIds) -> Result<Table<SpanV6>, TooCrowded> {
    let (dir, spans, chunks) = build(dsts, 128, BUCKET_MAX_V6, ids).ok_or(TooCrowded(egress_common::MAP_DIR_V6))?;
    Ok(Table { dir, spans: spans_v6(spans), chunks })
}

/// Stage 2, IPv4: SDIR_V4 and SSPAN_V4, for destination classes `0..classes`.
pub fn sources_v4(pairs: &[(u32, Prefix, Lists)], classes: u32, ids: &mut ListIds) -> Result<Table<SpanV4>, TooCrowded> {
    let (dir, spans, chunks) = build_sources(pairs, classes, 32, BUCKET_MAX_V4, ids).ok_or(TooCrowded(egress_common::MAP_SDIR_V4))?;
    Ok(Table { dir, spans: spans_v4(spans), chunks })
}

/// Stage 2, IPv6: SDIR_V6 and SSPAN_V6.
pub fn sources_v6(pairs: &[(u32, Prefix, Lists)], classes: u32, ids: &mut ListIds) -> Result<Table<SpanV6>, TooCrowded> {
    let (dir, spans, chunks) = build_sources(pairs, classes, 128, BUCKET_MAX_V6, ids).ok_or(TooCrowded(egress_common::MAP_SDIR_V6))?;
    Ok(Table { dir, spans: spans_v6(spans), chunks })
}

/// Builds with buckets of at most `bucket_max` spans, doubling it while the
/// table would need more than [`DIR_MAX_CHUNKS`] chunks; `None` past
/// [`BUCKET_LIMIT`].
fn with_budget(mut bucket_max: usize, mut build: impl FnMut(&mut Builder)) -> Option<(Vec<DirEntry>, Spans, u32)> {
    loop {
        let mut b = Builder { dir: Vec::new(), out: Vec::new(), chunks: 0, bucket_max, over: false };
        build(&mut b);
        if !b.over {
            return Some((b.dir, b.out, b.chunks));
        }
        bucket_max *= 2;
        if bucket_max > BUCKET_LIMIT as usize {
            return None;
        }
    }
}

/// One entry per destination class, covering its whole source space, then the
/// chunks below them. Empty when the family has no source-specific class.
fn build_sources(
    pairs: &[(u32, Prefix, Lists)],
    classes: u32,
    width: u32,
    bucket_max: usize,
    ids: &mut ListIds,
) -> Option<(Vec<DirEntry>, Spans, u32)> {
    if pairs.is_empty() {
        return Some((Vec::new(), Vec::new(), 0));
    }
    let mut by_class: Vec<Vec<(u128, u8, u32)>> = vec![Vec::new(); classes as usize];
    for (class, p, l) in pairs {
        by_class[*class as usize].push((start(p, width), p.len, ids.id(l)));
    }
    let spans_of: Vec<Option<Spans>> = by_class
        .into_iter()
        .map(|mut ps| {
            (!ps.is_empty()).then(|| {
                ps.sort_unstable();
                spans(&ps, width)
            })
        })
        .collect();
    with_budget(bucket_max, |b| {
        b.dir = vec![DirEntry::default(); classes as usize];
        for (class, sp) in spans_of.iter().enumerate() {
            if let Some(sp) = sp {
                b.dir[class] = b.entry(sp, 0, width);
            }
        }
    })
}

/// The prefix as its first address, in a `width`-bit space.
fn start(p: &Prefix, width: u32) -> u128 {
    if width == 32 { u32::from_be_bytes([p.addr[0], p.addr[1], p.addr[2], p.addr[3]]) as u128 } else { u128::from_be_bytes(p.addr) }
}

/// All ones in the low `bits` bits.
fn ones(bits: u32) -> u128 {
    if bits >= 128 { u128::MAX } else { (1u128 << bits) - 1 }
}

type Spans = Vec<(u128, u32)>;

fn build(dsts: &[(Prefix, DstValue)], width: u32, bucket_max: usize, ids: &mut ClassIds) -> Option<(Vec<DirEntry>, Spans, u32)> {
    let mut ps: Vec<(u128, u8, u32)> = dsts.iter().map(|(p, v)| (start(p, width), p.len, ids.id(v))).collect();
    ps.sort_unstable();
    let spans = spans(&ps, width);
    if spans.len() == 1 && spans[0].1 == 0 {
        // No destination prefix in this family: an empty table (the map keeps
        // one zero entry; every lookup answers class 0).
        return Some((Vec::new(), Vec::new(), 0));
    }
    let below = width - DIR_ROOT_BITS;
    with_budget(bucket_max, |b| {
        b.dir = vec![DirEntry::default(); DIR_ROOT_LEN as usize];
        // The root's blocks in address order: the spans each one overlaps
        // (spans[i0..i1]) found by one sweep, not a search per block.
        let (mut i0, mut i1) = (0, 1);
        for j in 0..DIR_ROOT_LEN as usize {
            let lo = (j as u128) << below;
            let hi = lo | ones(below);
            while i0 + 1 < spans.len() && spans[i0 + 1].0 <= lo {
                i0 += 1;
            }
            i1 = i1.max(i0 + 1);
            while i1 < spans.len() && spans[i1].0 <= hi {
                i1 += 1;
            }
            b.dir[j] = if i1 - i0 == 1 { DirEntry::class(spans[i0].1) } else { b.entry(&spans[i0..i1], lo, below) };
        }
    })
}

/// Sorted (first address, prefix length, class) -> disjoint spans (first
/// address, class of the longest prefix there), the first at address 0,
/// neighbours of different classes. Nested prefixes sort parent first, so a
/// stack of the open prefixes says which class resumes where one ends.
fn spans(ps: &[(u128, u8, u32)], width: u32) -> Spans {
    let last = ones(width);
    let mut out: Spans = vec![(0, 0)];
    let emit = |out: &mut Spans, at: u128, class: u32| {
        let n = out.len();
        if out[n - 1].0 == at {
            out[n - 1].1 = class;
            if n >= 2 && out[n - 2].1 == class {
                out.pop();
            }
        } else if out[n - 1].1 != class {
            out.push((at, class));
        }
    };
    let mut open: Vec<(u128, u32)> = Vec::new(); // (last address, class)
    for &(s, len, class) in ps {
        while let Some(&(end, _)) = open.last() {
            if end >= s {
                break;
            }
            open.pop();
            emit(&mut out, end + 1, open.last().map_or(0, |o| o.1));
        }
        emit(&mut out, s, class);
        open.push((s | ones(width - len as u32), class));
    }
    while let Some((end, _)) = open.pop() {
        if end != last {
            emit(&mut out, end + 1, open.last().map_or(0, |o| o.1));
        }
    }
    out
}

struct Builder {
    dir: Vec<DirEntry>,
    out: Spans,
    chunks: u32,
    bucket_max: usize,
    /// The chunk budget ran out: the table is discarded and built again
    /// with longer buckets.
    over: bool,
}

impl Builder {
    /// The entry for the block of `2^bits` addresses starting at `lo`;
    /// `spans` holds (at least) the spans it overlaps, the first starting at
    /// or before `lo`.
    fn entry(&mut self, spans: &[(u128, u32)], lo: u128, bits: u32) -> DirEntry {
        let hi = lo | ones(bits);
        let i0 = spans.partition_point(|s| s.0 <= lo) - 1;
        let i1 = spans.partition_point(|s| s.0 <= hi);
        let n = i1 - i0;
        if n == 1 {
            return DirEntry::class(spans[i0].1);
        }
        if n > self.bucket_max && bits >= 8 && self.chunks >= DIR_MAX_CHUNKS {
            self.over = true;
        }
        if n <= self.bucket_max || self.over || bits < 8 {
            let at = self.out.len() as u32;
            self.out.push((lo, spans[i0].1));
            self.out.extend_from_slice(&spans[i0 + 1..i1]);
            return DirEntry::bucket(at, n as u32);
        }
        self.chunks += 1;
        let at = self.dir.len();
        self.dir.resize(at + DIR_CHUNK_LEN as usize, DirEntry::default());
        let inside = &spans[i0..i1];
        for k in 0..DIR_CHUNK_LEN as usize {
            self.dir[at + k] = self.entry(inside, lo | (k as u128) << (bits - 8), bits - 8);
        }
        DirEntry::chunk(at as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::model::lookup;

    fn p4(a: [u8; 4], len: u8) -> Prefix {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        Prefix { addr, len, v6: false }
    }

    fn value(n: u32) -> DstValue {
        let mut v = DstValue::default();
        v.lists.own = n;
        v
    }

    /// The longest prefix's value, by brute force.
    fn reference(dsts: &[(Prefix, DstValue)], a: u32) -> Option<DstValue> {
        dsts.iter()
            .filter(|(p, _)| {
                let s = start(p, 32) as u32;
                let m = if p.len == 0 { 0 } else { u32::MAX << (32 - p.len) };
                a & m == s
            })
            .max_by_key(|(p, _)| p.len)
            .map(|(_, v)| *v)
    }

    #[test]
    fn nested_prefixes_give_the_innermost_class() {
        let dsts = vec![
            (p4([10, 0, 0, 0], 8), value(1)),
            (p4([10, 1, 0, 0], 16), value(2)),
            (p4([10, 1, 2, 0], 24), value(3)),
            (p4([10, 1, 2, 3], 32), value(4)),
            (p4([10, 1, 2, 255], 32), value(5)),
            (p4([10, 255, 255, 0], 24), value(6)),
            (p4([255, 255, 255, 255], 32), value(7)),
        ];
        let mut ids = ClassIds::new();
        let t = table_v4(&dsts, &mut ids).unwrap();
        let spans: Spans = t.spans.iter().map(|s| (s.start as u128, s.class)).collect();
        let mut rng = 0x1234_5678u32;
        let mut probes: Vec<u32> =
            vec![0, u32::MAX, 0x0a00_0000, 0x0a01_0203, 0x0a01_02ff, 0x0a01_0300, 0x0aff_ff00, 0x0aff_ffff, 0x0b00_0000];
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            probes.push(rng & 0x0fff_ffff | 0x0a00_0000);
        }
        for a in probes {
            let got = lookup(&t.dir, &spans, a as u128, 32, None);
            let want = reference(&dsts, a);
            assert_eq!(got != 0, want.is_some(), "{a:#x}");
            if let Some(w) = want {
                assert_eq!(ids.values[got as usize], w, "{a:#x}");
            }
        }
    }

    #[test]
    fn crowded_blocks_get_chunks_and_empty_families_nothing() {
        // 300 /32s in one /24: the root entry and its /24 chunk split them.
        let dsts: Vec<(Prefix, DstValue)> = (0..300u32).map(|i| (p4([10, 0, (i >> 8) as u8, i as u8], 32), value(i))).collect();
        let mut ids = ClassIds::new();
        let t = table_v4(&dsts, &mut ids).unwrap();
        assert!(t.chunks >= 2, "{}", t.chunks);
        let spans: Spans = t.spans.iter().map(|s| (s.start as u128, s.class)).collect();
        for i in 0..300u32 {
            let got = lookup(&t.dir, &spans, (0x0a00_0000 | i) as u128, 32, None);
            assert_eq!(ids.values[got as usize], value(i));
        }
        assert_eq!(lookup(&t.dir, &spans, 0x0a00_0200, 32, None), 0);
        let t = table_v6(&[], &mut ids).unwrap();
        assert!(t.dir.is_empty() && t.spans.is_empty());
    }

    #[test]
    fn sources_per_class_and_bounded_chunks() {
        // Class 1: three nested sources; class 0: none (stays "no candidates").
        let l = |n: u32| Lists { own: n, ..Lists::default() };
        let pairs = vec![
            (1, p4([0, 0, 0, 0], 0), l(1)),
            (1, p4([192, 0, 2, 0], 24), l(2)),
            (1, p4([192, 0, 2, 128], 25), l(3)),
            (1, p4([192, 0, 2, 7], 32), l(4)),
        ];
        let mut ids = ListIds::new();
        let t = sources_v4(&pairs, 2, &mut ids).unwrap();
        let sp: Spans = t.spans.iter().map(|s| (s.start as u128, s.class)).collect();
        let at = |a: u32, c: u32| ids.values[lookup(&t.dir, &sp, a as u128, 32, Some(c)) as usize];
        assert_eq!(at(0x0a00_0001, 1), l(1));
        assert_eq!(at(0xc000_0201, 1), l(2));
        assert_eq!(at(0xc000_0207, 1), l(4));
        assert_eq!(at(0xc000_02ff, 1), l(3));
        assert_eq!(at(0xc000_0300, 1), l(1));
        assert_eq!(lookup(&t.dir, &sp, 0xc000_0207, 32, Some(0)), 0);
        // Past the chunk budget, buckets grow instead (and still answer):
        // 5000 /24s, and a budget of one chunk.
        let dsts: Vec<(Prefix, DstValue)> = (0..5000u32).map(|i| (p4([10, (i >> 8) as u8, i as u8, 0], 24), value(i))).collect();
        let mut ids = ClassIds::new();
        let mut ps: Vec<(u128, u8, u32)> = dsts.iter().map(|(p, v)| (start(p, 32), p.len, ids.id(v))).collect();
        ps.sort_unstable();
        let sp = spans(&ps, 32);
        let mut budget_used = 0;
        let (dir, out, chunks) = with_budget(8, |b| {
            b.chunks = DIR_MAX_CHUNKS - 1;
            b.dir = vec![DirEntry::default(); DIR_ROOT_LEN as usize];
            for j in 0..DIR_ROOT_LEN as usize {
                b.dir[j] = b.entry(&sp, (j as u128) << 16, 16);
            }
            budget_used += 1;
        })
        .unwrap();
        assert!(budget_used > 1 && chunks < DIR_MAX_CHUNKS, "{budget_used} builds, {chunks} chunks");
        for i in (0..5000u32).step_by(7) {
            let a = 0x0a00_0000 | i << 8 | 0x42;
            assert_eq!(ids.values[lookup(&dir, &out, a as u128, 32, None) as usize], value(i));
        }
        // Nothing fits: refused.
        assert!(with_budget(8, |b| b.over = true).is_none());
    }
}
