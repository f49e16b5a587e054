//! The program's lookup over a [`Compiled`], in plain Rust: the same walk over
//! the same entries, in the same order, as classify.rs and flat.rs. Two uses:
//! the tests hold the compiler's output (a recompile's included) to the
//! reference classifier without a kernel, and [`trace`] lists the map entries
//! a packet's full lookup reads, so that the benchmark can say how many cache
//! lines a shape's first packet touches (BENCHMARKS.md part 1b).

use egress_common::{
    DIR_BUCKET, DIR_CHUNK, DIR_CLASS, DIR_COUNT_MASK, DIR_ROOT_BITS, DST_SRC_ANY, DirEntry, INLINE_LIST, InlineRule, ListSlot, Lists,
    MAP_DIR_V4, MAP_DIR_V6, MAP_DST_CLASSES, MAP_LISTS, MAP_PAIR_LISTS, MAP_RANGES, MAP_SDIR_V4, MAP_SDIR_V6, MAP_SPAN_V4, MAP_SPAN_V6,
    MAP_SSPAN_V4, MAP_SSPAN_V6, NO_LIST, PCLASS_COUNT, PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_NO_L4, PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP,
    PortRange, RANGE_SEARCH_STEPS, SPAN_SEARCH_STEPS, SpanV4, SpanV6,
};

use super::{Compiled, flat::Table};
use crate::reference::{L4, PacketMeta};

/// No rule: sorts after every slot.
const NONE: u32 = u32::MAX;

/// One map entry the lookup reads: the map, the entry's index and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    pub map: &'static str,
    pub index: u64,
    pub size: u32,
}

/// The entries a lookup read, in order (each read depends on the one before).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub reads: Vec<Read>,
}

impl Trace {
    fn read<T>(&mut self, map: &'static str, index: u64) {
        self.read_sized(map, index, size_of::<T>());
    }

    fn read_sized(&mut self, map: &'static str, index: u64, size: usize) {
        // Array elements are 8-byte aligned in the kernel.
        self.reads.push(Read { map, index, size: size.div_ceil(8) as u32 * 8 });
    }

    /// The distinct 64-byte lines read, as (map, line), counting each map's
    /// values from offset 0 (a memory-mappable array's start on a page; a plain
    /// array's are shifted by its header, which moves line boundaries but not
    /// their number much).
    pub fn line_set(&self) -> Vec<(&'static str, u64)> {
        let mut lines: Vec<(&'static str, u64)> = Vec::new();
        for r in &self.reads {
            let (first, last) = (r.index * r.size as u64 / 64, (r.index * r.size as u64 + r.size as u64 - 1) / 64);
            for l in first..=last {
                if !lines.contains(&(r.map, l)) {
                    lines.push((r.map, l));
                }
            }
        }
        lines
    }

    /// How many distinct lines were read.
    pub fn lines(&self) -> usize {
        self.line_set().len()
    }
}

/// The counter slot of the first matching rule (0: the default policy).
pub fn classify(c: &Compiled, p: &PacketMeta) -> u32 {
    trace(c, p).0
}

/// As [`classify`], with the map entries the program reads on the way (the
/// full lookup of a flow's first packet: no flow cache, no connection table).
pub fn trace(c: &Compiled, p: &PacketMeta) -> (u32, Trace) {
    let mut t = Trace::default();
    let slot = full_lookup(c, p, &mut t);
    (slot, t)
}

fn full_lookup(c: &Compiled, p: &PacketMeta, t: &mut Trace) -> u32 {
    let v6 = p.dst.is_ipv6();
    let (src, dst) = (bits(p.src), bits(p.dst));
    let class = if v6 {
        v6_walk(&c.flat_v6, [MAP_DIR_V6, MAP_SPAN_V6], dst, None, t)
    } else {
        v4_walk(&c.flat_v4, [MAP_DIR_V4, MAP_SPAN_V4], dst, None, t)
    };
    if class == 0 {
        return 0;
    }
    t.read::<egress_common::DstValue>(MAP_DST_CLASSES, class as u64);
    let Some(d) = c.dst_classes.get(class as usize) else { return 0 };
    let lists = if d.flags & DST_SRC_ANY != 0 {
        d.lists
    } else {
        let id = if v6 {
            v6_walk(&c.src_v6, [MAP_SDIR_V6, MAP_SSPAN_V6], src, Some(d.lists.own), t)
        } else {
            v4_walk(&c.src_v4, [MAP_SDIR_V4, MAP_SSPAN_V4], src, Some(d.lists.own), t)
        };
        if id == 0 {
            return 0;
        }
        t.read::<Lists>(MAP_PAIR_LISTS, id as u64);
        let Some(l) = c.pair_lists.get(id as usize) else { return 0 };
        *l
    };
    let (pclass, port) = packet_class(p);
    let r = in_lists(c, &lists, pclass, port, t);
    if r == NONE { 0 } else { r }
}

fn v4_walk(table: &Table<SpanV4>, maps: [&'static str; 2], addr: u128, class: Option<u32>, t: &mut Trace) -> u32 {
    walk(&table.dir, |i| table.spans.get(i).map(|s| (s.start as u128, s.class)), size_of::<SpanV4>(), maps, addr, 32, class, t)
}

fn v6_walk(table: &Table<SpanV6>, maps: [&'static str; 2], addr: u128, class: Option<u32>, t: &mut Trace) -> u32 {
    walk(
        &table.dir,
        |i| table.spans.get(i).map(|s| ((s.hi as u128) << 64 | s.lo as u128, s.class)),
        size_of::<SpanV6>(),
        maps,
        addr,
        128,
        class,
        t,
    )
}

/// The class (or stage-2 list id) of `addr`: from the root entry (stage 1) or
/// the destination class's entry (stage 2, `class`), down the chunks, to a
/// class or a bucket's binary search.
#[allow(clippy::too_many_arguments)]
fn walk(
    dir: &[DirEntry],
    span: impl Fn(usize) -> Option<(u128, u32)>,
    span_size: usize,
    [dir_map, span_map]: [&'static str; 2],
    addr: u128,
    width: u32,
    class: Option<u32>,
    t: &mut Trace,
) -> u32 {
    let (top, mut shift) = match class {
        Some(c) => (c as usize, width),
        None => ((addr >> (width - DIR_ROOT_BITS)) as usize, width - DIR_ROOT_BITS),
    };
    t.read::<DirEntry>(dir_map, top as u64);
    let Some(mut e) = dir.get(top).copied() else { return 0 };
    while e.kind() == DIR_CHUNK && shift >= 8 {
        shift -= 8;
        let at = e.val as usize + ((addr >> shift) & 0xff) as usize;
        t.read::<DirEntry>(dir_map, at as u64);
        let Some(n) = dir.get(at) else { return 0 };
        e = *n;
    }
    match e.kind() {
        DIR_CLASS => e.val,
        DIR_BUCKET => {
            let (mut lo, mut hi) = (e.val as usize, (e.val + (e.aux & DIR_COUNT_MASK)) as usize);
            for _ in 0..SPAN_SEARCH_STEPS {
                if hi - lo <= 1 {
                    break;
                }
                let mid = lo + (hi - lo) / 2;
                t.read_sized(span_map, mid as u64, span_size);
                match span(mid) {
                    Some((start, _)) if start <= addr => lo = mid,
                    Some(_) => hi = mid,
                    None => return 0,
                }
            }
            // The class of the last span at or before the address.
            t.read_sized(span_map, lo as u64, span_size);
            span(lo).map_or(0, |s| s.1)
        }
        _ => 0,
    }
}

/// The class of an address in a table given as (span start, class) pairs
/// (flat.rs's tests).
#[cfg(test)]
pub(super) fn lookup(dir: &[DirEntry], spans: &[(u128, u32)], addr: u128, width: u32, class: Option<u32>) -> u32 {
    walk(dir, |i| spans.get(i).copied(), 16, [MAP_DIR_V4, MAP_SPAN_V4], addr, width, class, &mut Trace::default())
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

fn in_lists(c: &Compiled, l: &Lists, pclass: u8, port: u16, t: &mut Trace) -> u32 {
    let own = if l.own == INLINE_LIST { inline(&l.inline, pclass, port) } else { first_in(c, l.own, pclass, port, t) };
    if own < l.inherited_first { own } else { own.min(first_in(c, l.inherited, pclass, port, t)) }
}

fn inline(r: &InlineRule, pclass: u8, port: u16) -> u32 {
    let base = pclass & !PCLASS_NO_L4;
    if base > 7 || r.classes & (1 << base) == 0 {
        return NONE;
    }
    let fits = if pclass & PCLASS_NO_L4 != 0 { r.l4_any != 0 } else { r.lo <= port && port <= r.hi };
    if fits { r.rule } else { NONE }
}

/// The binary search of classify.rs's `first_in`.
fn first_in(c: &Compiled, list: u32, pclass: u8, port: u16, t: &mut Trace) -> u32 {
    let class = (pclass & !PCLASS_NO_L4) as u32;
    if list == NO_LIST || class >= PCLASS_COUNT {
        return NONE;
    }
    let at = list * PCLASS_COUNT + class;
    t.read::<ListSlot>(MAP_LISTS, at as u64);
    let Some(slot) = c.list_slots.get(at as usize) else { return NONE };
    if pclass & PCLASS_NO_L4 != 0 {
        return if slot.no_l4_rule == 0 { NONE } else { slot.no_l4_rule };
    }
    let port = port as u32;
    let (mut lo, mut hi) = (slot.start, slot.start + slot.count);
    for _ in 0..RANGE_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        t.read::<PortRange>(MAP_RANGES, mid as u64);
        let Some(r) = c.ranges.get(mid as usize) else { return NONE };
        if port < r.lo as u32 {
            hi = mid;
        } else if port > r.hi as u32 {
            lo = mid + 1;
        } else {
            return r.rule;
        }
    }
    NONE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_counts_each_line_once() {
        let mut t = Trace::default();
        t.read::<PortRange>(MAP_RANGES, 0);
        t.read::<PortRange>(MAP_RANGES, 4);
        t.read::<PortRange>(MAP_RANGES, 5);
        t.read::<ListSlot>(MAP_LISTS, 0);
        // RANGES elements are 16 bytes in the kernel: 0 and 4, 5 are lines 0 and 1.
        assert_eq!(t.lines(), 3);
        t.read::<PortRange>(MAP_RANGES, 7);
        assert_eq!(t.lines(), 3);
    }

    #[test]
    fn a_lookup_through_a_source_class_reads_both_stages() {
        let rs = crate::rules::parse(
            "r.toml",
            "default_policy = \"allow\"\n[[rule]]\nsrc = \"192.0.2.0/25\"\ndst = \"198.51.100.0/24\"\nprotocol = \"tcp\"\nports = \"80-90\"\n\
             [[rule]]\ndst = \"198.51.100.0/24\"\nprotocol = \"tcp\"\nports = \"85-100\"\naction = \"deny\"\n",
        )
        .unwrap();
        let c = super::super::compile(&rs).unwrap();
        let p = |src: &str, dport| PacketMeta {
            src: src.parse().unwrap(),
            dst: "198.51.100.9".parse().unwrap(),
            proto: 6,
            l4: L4::Ports { dport },
        };
        let (slot, t) = trace(&c, &p("192.0.2.1", 85));
        assert_eq!(slot, 1);
        let maps: Vec<&str> = t.reads.iter().map(|r| r.map).collect();
        // The root entry, the /24's bucket, its class, the source stage, the lists.
        assert_eq!(&maps[..3], &[MAP_DIR_V4, MAP_SPAN_V4, MAP_SPAN_V4], "{maps:?}");
        let at = |m: &str| maps.iter().position(|x| *x == m).unwrap_or(usize::MAX);
        assert!(at(MAP_DST_CLASSES) < at(MAP_SDIR_V4) && at(MAP_SDIR_V4) < at(MAP_PAIR_LISTS), "{maps:?}");
        assert!(t.lines() >= 5, "{t:?}");
        assert_eq!(trace(&c, &p("192.0.2.200", 85)).0, 2);
        assert_eq!(trace(&c, &p("192.0.2.200", 101)).0, 0);
    }
}
