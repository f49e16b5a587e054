//! The full lookup (a flow-cache miss). Precedence (first match in file order) is
//! resolved by the compiler, so the program never loops over rules:
//!  1. DIR_V4/DIR_V6, SPAN_V4/SPAN_V6, DST_CLASSES (flat.rs): longest
//!     destination prefix -> destination class, in flat arrays. No class: no
//!     rule's destination contains the packet's -> default policy.
//!  2. SDIR_V4/SDIR_V6, SSPAN_V4/SSPAN_V6, PAIR_LISTS (flat.rs; skipped when
//!     the class says DST_SRC_ANY): (class, longest source prefix among the
//!     rules that reach the class) -> candidate lists. None -> default policy.
//!  3. LISTS + RANGES, up to twice: (candidate list, protocol class) -> a sorted
//!     run of disjoint port (or ICMP type/code) intervals, each holding the first
//!     rule of the list that matches there; a binary search finds the packet's.
//!     The destination's own rules and the rules inherited from enclosing prefixes
//!     are separate lists; the earlier of the two answers wins. An own list of one
//!     rule is checked in place.
//!     No answer -> default policy.

use egress_common::{
    DST_SRC_ANY, DstValue, INLINE_LIST, InlineRule, Lists, NO_LIST, PCLASS_COUNT, PCLASS_NO_L4, RANGE_SEARCH_STEPS, Verdict,
};

use crate::{
    epoch, flat,
    maps::{LISTS, RANGES},
    parse::Packet,
};

/// Stages 1-2 in a BPF function of their own (the stateful program): their
/// locals get a frame of their own (BPF's 512 bytes are shared by the entry
/// point and every chain of calls). Answers through `out` and a bool, not an
/// `Option`: the kernel rejects rustc's BTF for an enum with data in a signature.
#[inline(never)]
fn lists_call(pkt: &Packet, out: &mut Lists) -> bool {
    match lists(pkt, 0) {
        Some(l) => {
            *out = l;
            true
        }
        None => false,
    }
}

/// Stages 1-2 in the half of EPOCH value `epoch` (epoch.rs; 0 in the split
/// body, which never reads EPOCH).
#[inline(always)]
fn lists(pkt: &Packet, epoch: u32) -> Option<Lists> {
    if pkt.v6 {
        lists_of(flat::dst_v6(&pkt.dst, epoch::dir_v6(epoch))?, pkt)
    } else {
        lists_of(flat::dst_v4(u32::from_be_bytes([pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]]), epoch::dir_v4(epoch))?, pkt)
    }
}

/// Stage 2: the candidate lists of destination class `d` for the packet's source.
#[inline(always)]
fn lists_of(d: &DstValue, pkt: &Packet) -> Option<Lists> {
    if d.flags & DST_SRC_ANY != 0 {
        return Some(d.lists);
    }
    if pkt.v6 {
        flat::src_v6(d.lists.own, &pkt.src).copied()
    } else {
        flat::src_v4(d.lists.own, u32::from_be_bytes([pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]])).copied()
    }
}

/// Stages 2-3 for a destination class found another way (a learned name's,
/// dns.rs): the first of its rules that matches the packet, or a verdict whose
/// rule is `u32::MAX`.
#[inline(always)]
pub fn from_dst(d: &DstValue, pkt: &Packet) -> Verdict {
    match lists_of(d, pkt) {
        Some(l) => in_lists(&l, pkt),
        None => NONE,
    }
}

/// "No rule of this list matches": sorts after every rule slot, so the earlier of
/// two answers is simply the smaller. Plain values rather than `Option`: LLVM may
/// leave an `Option`'s unused payload in a register the verifier sees as unread.
pub const NONE: Verdict = Verdict { rule: u32::MAX, action: 0 };

/// The first rule of candidate list `list` that matches the packet's protocol
/// class and port: a binary search over the list's disjoint intervals.
#[inline(always)]
fn first_in(list: u32, pkt: &Packet) -> Verdict {
    if list == NO_LIST {
        return NONE;
    }
    let class = (pkt.pclass & !PCLASS_NO_L4) as u32;
    if class >= PCLASS_COUNT {
        return NONE;
    }
    let Some(slot) = LISTS.get(list.wrapping_mul(PCLASS_COUNT).wrapping_add(class)) else {
        return NONE;
    };
    if pkt.pclass & PCLASS_NO_L4 != 0 {
        if slot.no_l4_rule == 0 {
            return NONE;
        }
        return Verdict { rule: slot.no_l4_rule, action: slot.no_l4_action };
    }
    let port = u16::from_be_bytes(pkt.port) as u32;
    // Search [lo, hi) of RANGES.
    let (mut lo, mut hi) = (slot.start, slot.start.wrapping_add(slot.count));
    for _ in 0..RANGE_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let Some(r) = RANGES.get(mid) else {
            return NONE;
        };
        if port < r.lo as u32 {
            hi = mid;
        } else if port > r.hi as u32 {
            lo = mid + 1;
        } else {
            return Verdict { rule: r.rule, action: r.action };
        }
    }
    NONE
}

/// The single own rule, checked in place.
#[inline(always)]
fn inline_match(r: &InlineRule, pkt: &Packet) -> Verdict {
    let base = pkt.pclass & !PCLASS_NO_L4;
    // Classes are 0..=4; anything else matches no rule (and the shift stays small).
    if base > 7 || r.classes & (1 << base) == 0 {
        return NONE;
    }
    let fits = if pkt.pclass & PCLASS_NO_L4 != 0 {
        r.l4_any != 0
    } else {
        let port = u16::from_be_bytes(pkt.port);
        r.lo <= port && port <= r.hi
    };
    if fits { Verdict { rule: r.rule, action: r.action as u32 } } else { NONE }
}

/// The full lookup. `SPLIT`: stages 1-2 run as a BPF call (see [`lists_call`])
/// in half 0; without it, no call, in the half of `epoch`.
#[inline(always)]
pub fn lookup<const SPLIT: bool>(pkt: &Packet, epoch: u32) -> Option<Verdict> {
    let l = if SPLIT {
        let mut l = Lists::default();
        if !lists_call(pkt, &mut l) {
            return None;
        }
        l
    } else {
        lists(pkt, epoch)?
    };
    let best = in_lists(&l, pkt);
    if best.rule == NONE.rule { None } else { Some(best) }
}

/// Stage 3 over both lists.
#[inline(always)]
fn in_lists(l: &Lists, pkt: &Packet) -> Verdict {
    let own = if l.own == INLINE_LIST { inline_match(&l.inline, pkt) } else { first_in(l.own, pkt) };
    // The own answer precedes every inherited rule: no second search.
    if own.rule < l.inherited_first {
        own
    } else {
        let inherited = first_in(l.inherited, pkt);
        if inherited.rule < own.rule { inherited } else { own }
    }
}
