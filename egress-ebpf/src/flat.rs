//! Stages 1 and 2 of the full lookup (classify.rs): destination address ->
//! destination class, and (class, source address) -> candidate lists, from
//! the flat tables egress-common's flat.rs describes. A top entry, a few chunk
//! entries (one per address byte), then an answer or a bucket's binary search:
//! array reads only, no pointers to chase.

use aya_ebpf::maps::Array;
use egress_common::{
    DIR_BUCKET, DIR_CHUNK, DIR_CLASS, DIR_COUNT_MASK, DIR_LEVELS_V4, DIR_LEVELS_V6, DIR_ROOT_BITS, DirEntry, DstValue, Lists,
    SDIR_LEVELS_V4, SDIR_LEVELS_V6, SPAN_SEARCH_STEPS, SpanV4, SpanV6,
};

use crate::maps::{DIR_V4, DIR_V6, DST_CLASSES, PAIR_LISTS, SDIR_V4, SDIR_V6, SPAN_V4, SPAN_V6, SSPAN_V4, SSPAN_V6};

/// The destination class of an IPv4 address (host order) in the half whose
/// root starts at `root` (epoch.rs); `None`: no rule's destination contains it.
#[inline(always)]
pub fn dst_v4(a: u32, root: u32) -> Option<&'static DstValue> {
    let e = *DIR_V4.get(root.wrapping_add(a >> (32 - DIR_ROOT_BITS)))?;
    let class = walk_v4(&DIR_V4, &SPAN_V4, e, a, DIR_LEVELS_V4)?;
    if class == 0 { None } else { DST_CLASSES.get(class) }
}

/// Stage 2, IPv4: the candidate lists of destination class `class` for source
/// `a` (host order); `None`: no candidate rule's source contains it.
#[inline(always)]
pub fn src_v4(class: u32, a: u32) -> Option<&'static Lists> {
    let e = *SDIR_V4.get(class)?;
    let id = walk_v4(&SDIR_V4, &SSPAN_V4, e, a, SDIR_LEVELS_V4)?;
    if id == 0 { None } else { PAIR_LISTS.get(id) }
}

/// From top entry `e`, down the chunks of the last `levels` address bytes of
/// `a`, to the answer: a class (or list id), or a bucket's span.
#[inline(always)]
fn walk_v4(dir: &Array<DirEntry>, spans: &Array<SpanV4>, mut e: DirEntry, a: u32, levels: u32) -> Option<u32> {
    for i in 0..levels {
        if e.kind() != DIR_CHUNK {
            break;
        }
        let byte = (a >> (8 * (levels - 1 - i))) & 0xff;
        e = *dir.get(e.val.wrapping_add(byte))?;
    }
    match e.kind() {
        DIR_CLASS => Some(e.val),
        DIR_BUCKET => bucket_v4(spans, e.val, e.aux & DIR_COUNT_MASK, a),
        _ => None,
    }
}

/// The last span of the bucket `[start, start + n)` that starts at or before
/// `a` (the first always does) and its class.
#[inline(always)]
fn bucket_v4(spans: &Array<SpanV4>, start: u32, n: u32, a: u32) -> Option<u32> {
    let (mut lo, mut hi) = (start, start.wrapping_add(n));
    for _ in 0..SPAN_SEARCH_STEPS {
        if hi.wrapping_sub(lo) <= 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if spans.get(mid)?.start <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(spans.get(lo)?.class)
}

/// An IPv6 address (network order bytes) as two host-order halves.
#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

/// Byte `b` (0..16) of an address given as halves.
#[inline(always)]
fn byte_of(hi: u64, lo: u64, b: u32) -> u32 {
    (if b < 8 { hi >> (8 * (7 - b)) } else { lo >> (8 * (15 - b)) }) as u32 & 0xff
}

/// The destination class of an IPv6 address (network order bytes); as [`dst_v4`].
#[inline(always)]
pub fn dst_v6(dst: &[u8; 16], root: u32) -> Option<&'static DstValue> {
    let (hi, lo) = halves(dst);
    let e = *DIR_V6.get(root.wrapping_add((hi >> (64 - DIR_ROOT_BITS)) as u32))?;
    let class = walk_v6(&DIR_V6, &SPAN_V6, e, hi, lo, DIR_ROOT_BITS / 8, DIR_LEVELS_V6)?;
    if class == 0 { None } else { DST_CLASSES.get(class) }
}

/// Stage 2, IPv6; as [`src_v4`].
#[inline(always)]
pub fn src_v6(class: u32, src: &[u8; 16]) -> Option<&'static Lists> {
    let (hi, lo) = halves(src);
    let e = *SDIR_V6.get(class)?;
    let id = walk_v6(&SDIR_V6, &SSPAN_V6, e, hi, lo, 0, SDIR_LEVELS_V6)?;
    if id == 0 { None } else { PAIR_LISTS.get(id) }
}

/// As [`walk_v4`]: `levels` chunk levels from address byte `first`.
#[inline(always)]
fn walk_v6(dir: &Array<DirEntry>, spans: &Array<SpanV6>, mut e: DirEntry, hi: u64, lo: u64, first: u32, levels: u32) -> Option<u32> {
    for i in 0..levels {
        if e.kind() != DIR_CHUNK {
            break;
        }
        e = *dir.get(e.val.wrapping_add(byte_of(hi, lo, first + i)))?;
    }
    match e.kind() {
        DIR_CLASS => Some(e.val),
        DIR_BUCKET => bucket_v6(spans, e.val, e.aux & DIR_COUNT_MASK, hi, lo),
        _ => None,
    }
}

/// As [`bucket_v4`], comparing 128-bit starts as two halves.
#[inline(always)]
fn bucket_v6(spans: &Array<SpanV6>, start: u32, n: u32, hi: u64, lo: u64) -> Option<u32> {
    let (mut l, mut h) = (start, start.wrapping_add(n));
    for _ in 0..SPAN_SEARCH_STEPS {
        if h.wrapping_sub(l) <= 1 {
            break;
        }
        let mid = l + (h - l) / 2;
        let s = spans.get(mid)?;
        if s.hi < hi || (s.hi == hi && s.lo <= lo) {
            l = mid;
        } else {
            h = mid;
        }
    }
    Some(spans.get(l)?.class)
}
