//! The program's lookup over a [`Compiled`], in plain Rust (tests): the same
//! walk over the same entries as classify.rs, so that the compiler's output,
//! a recompile's included, can be held to the reference classifier without a
//! kernel.

use egress_common::{
    DST_SRC_ANY, INLINE_LIST, InlineRule, Lists, NO_LIST, PCLASS_COUNT, PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_NO_L4, PCLASS_OTHER, PCLASS_TCP,
    PCLASS_UDP,
};

use super::{Compiled, flat::lookup};
use crate::reference::{L4, PacketMeta};

/// No rule: sorts after every slot.
const NONE: u32 = u32::MAX;

/// The counter slot of the first matching rule (0: the default policy).
pub fn classify(c: &Compiled, p: &PacketMeta) -> u32 {
    let v6 = p.dst.is_ipv6();
    let (src, dst) = (bits(p.src), bits(p.dst));
    let width = if v6 { 128 } else { 32 };
    let class = if v6 {
        let spans: Vec<(u128, u32)> = c.flat_v6.spans.iter().map(|s| ((s.hi as u128) << 64 | s.lo as u128, s.class)).collect();
        lookup(&c.flat_v6.dir, &spans, dst, width, None)
    } else {
        let spans: Vec<(u128, u32)> = c.flat_v4.spans.iter().map(|s| (s.start as u128, s.class)).collect();
        lookup(&c.flat_v4.dir, &spans, dst, width, None)
    };
    if class == 0 {
        return 0;
    }
    let d = c.dst_classes[class as usize];
    let lists = if d.flags & DST_SRC_ANY != 0 {
        d.lists
    } else {
        let id = if v6 {
            let spans: Vec<(u128, u32)> = c.src_v6.spans.iter().map(|s| ((s.hi as u128) << 64 | s.lo as u128, s.class)).collect();
            lookup(&c.src_v6.dir, &spans, src, width, Some(d.lists.own))
        } else {
            let spans: Vec<(u128, u32)> = c.src_v4.spans.iter().map(|s| (s.start as u128, s.class)).collect();
            lookup(&c.src_v4.dir, &spans, src, width, Some(d.lists.own))
        };
        if id == 0 {
            return 0;
        }
        c.pair_lists[id as usize]
    };
    let (pclass, port) = packet_class(p);
    let r = in_lists(c, &lists, pclass, port);
    if r == NONE { 0 } else { r }
}

fn bits(a: std::net::IpAddr) -> u128 {
    match a {
        std::net::IpAddr::V4(a) => u32::from(a) as u128,
        std::net::IpAddr::V6(a) => u128::from(a),
    }
}

fn packet_class(p: &PacketMeta) -> (u8, u16) {
    let base = match (p.proto, p.dst.is_ipv6()) {
        (6, _) => PCLASS_TCP,
        (17, _) => PCLASS_UDP,
        (1, false) => PCLASS_ICMP,
        (58, true) => PCLASS_ICMPV6,
        _ => PCLASS_OTHER,
    };
    match p.l4 {
        L4::Ports { dport } => (base, dport),
        L4::Icmp { ty, code } => (base, (ty as u16) << 8 | code as u16),
        L4::None => (base | PCLASS_NO_L4, 0),
    }
}

fn in_lists(c: &Compiled, l: &Lists, pclass: u8, port: u16) -> u32 {
    let own = if l.own == INLINE_LIST { inline(&l.inline, pclass, port) } else { first_in(c, l.own, pclass, port) };
    if own < l.inherited_first { own } else { own.min(first_in(c, l.inherited, pclass, port)) }
}

fn inline(r: &InlineRule, pclass: u8, port: u16) -> u32 {
    let base = pclass & !PCLASS_NO_L4;
    if base > 7 || r.classes & (1 << base) == 0 {
        return NONE;
    }
    let fits = if pclass & PCLASS_NO_L4 != 0 { r.l4_any != 0 } else { r.lo <= port && port <= r.hi };
    if fits { r.rule } else { NONE }
}

fn first_in(c: &Compiled, list: u32, pclass: u8, port: u16) -> u32 {
    let class = (pclass & !PCLASS_NO_L4) as u32;
    if list == NO_LIST || class >= PCLASS_COUNT {
        return NONE;
    }
    let Some(slot) = c.list_slots.get((list * PCLASS_COUNT + class) as usize) else { return NONE };
    if pclass & PCLASS_NO_L4 != 0 {
        return if slot.no_l4_rule == 0 { NONE } else { slot.no_l4_rule };
    }
    let run = &c.ranges[slot.start as usize..(slot.start + slot.count) as usize];
    run.iter().find(|r| r.lo <= port && port <= r.hi).map_or(NONE, |r| r.rule)
}
