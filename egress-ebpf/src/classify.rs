//! The full lookup (a flow-cache miss). Precedence (first match in file order) is
//! resolved by the compiler, so the program never loops over rules:
//!  1. DST_V4/DST_V6: longest destination prefix -> destination class. No entry:
//!     no rule's destination contains the packet's -> default policy.
//!  2. PAIR_V4/PAIR_V6 (skipped when the class says DST_SRC_ANY): (class, longest
//!     source prefix among the rules that reach the class) -> candidate lists.
//!     No entry -> default policy.
//!  3. PORTS, up to twice: (candidate list, protocol class, port or ICMP type/code)
//!     -> the first rule of the list that matches, as precomputed disjoint
//!     intervals. The destination's own rules and the rules inherited from
//!     enclosing prefixes are separate lists; the earlier of the two answers wins.
//!     No answer -> default policy.

use aya_ebpf::maps::lpm_trie::Key;
use egress_common::{DST_SRC_ANY, Lists, NO_LIST, PORT_KEY_FIXED_BITS, PairKeyV4, PairKeyV6, PortKey, Verdict};

use crate::{
    maps::{DST_V4, DST_V6, PAIR_V4, PAIR_V6, PORTS},
    parse::Packet,
};

/// Bits of a full port: the last stage's key is always looked up with all of them.
const PORT_BITS: u32 = 16;

#[inline(always)]
fn lists(pkt: &Packet) -> Option<Lists> {
    if pkt.v6 {
        let d = DST_V6.get(Key::new(128, pkt.dst))?;
        if d.flags & DST_SRC_ANY != 0 {
            return Some(d.lists);
        }
        let k = PairKeyV6 { dst_class: d.lists.own.to_be_bytes(), src: pkt.src };
        PAIR_V6.get(Key::new(32 + 128, k)).copied()
    } else {
        let dst = [pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]];
        let d = DST_V4.get(Key::new(32, dst))?;
        if d.flags & DST_SRC_ANY != 0 {
            return Some(d.lists);
        }
        let src = [pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]];
        let k = PairKeyV4 { dst_class: d.lists.own.to_be_bytes(), src };
        PAIR_V4.get(Key::new(32 + 32, k)).copied()
    }
}

#[inline(always)]
fn first_in(list: u32, pkt: &Packet) -> Option<Verdict> {
    if list == NO_LIST {
        return None;
    }
    let k = PortKey { list: list.to_be_bytes(), pclass: pkt.pclass, port: pkt.port, _pad: 0 };
    PORTS.get(Key::new(PORT_KEY_FIXED_BITS + PORT_BITS, k)).copied()
}

#[inline(always)]
pub fn lookup(pkt: &Packet) -> Option<Verdict> {
    let l = lists(pkt)?;
    let own = first_in(l.own, pkt);
    if let Some(v) = own
        && v.rule < l.inherited_first
    {
        return own;
    }
    match (own, first_in(l.inherited, pkt)) {
        (Some(a), Some(b)) => Some(if a.rule < b.rule { a } else { b }),
        (a, b) => a.or(b),
    }
}
