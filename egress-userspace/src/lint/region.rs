//! The geometry of the linter: prefixes, a rule's region per family and
//! protocol class, the exact coverage check (region splitting), and the index
//! of destination prefixes that finds the rules overlapping a rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::rules::{Protocol, Rule};

/// The L4 value of a packet without an L4 header of its own (a non-first
/// fragment, or a protocol other than TCP/UDP/ICMP); below it, TCP/UDP
/// destination ports and ICMP `type << 8 | code`.
pub(super) const NO_L4: u32 = 1 << 16;
/// The work one rule's check may do: a unit for each index node visited, each
/// indexed rule looked at, and each candidate compared with a region piece. A
/// check that runs out stops (the rule is said `unchecked`), so the linter's
/// cost has a bound whatever the file holds.
pub(super) struct Budget(pub(super) usize);

impl Budget {
    /// Spends `n` units; false (and nothing left) if there were not that many.
    pub(super) fn spend(&mut self, n: usize) -> bool {
        match self.0.checked_sub(n) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => {
                self.0 = 0;
                false
            }
        }
    }
}

/// A prefix of a family: `addr` left-aligned in 128 bits for both families (an
/// IPv4 /24 keeps its length 24; the whole family is length 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Pfx {
    pub(super) addr: u128,
    pub(super) len: u8,
}

impl Pfx {
    pub(super) fn mask(len: u8) -> u128 {
        if len == 0 { 0 } else { u128::MAX << (128 - len as u32) }
    }
    pub(super) fn of(n: &IpNet) -> Pfx {
        match n {
            IpNet::V4(n) => Pfx { addr: (u32::from(n.network()) as u128) << 96, len: n.prefix_len() },
            IpNet::V6(n) => Pfx { addr: u128::from(n.network()), len: n.prefix_len() },
        }
    }
    pub(super) fn contains(self, o: Pfx) -> bool {
        self.len <= o.len && o.addr & Pfx::mask(self.len) == self.addr
    }
    pub(super) fn overlaps(self, o: Pfx) -> bool {
        self.contains(o) || o.contains(self)
    }
    pub(super) fn halves(self) -> [Pfx; 2] {
        let bit = 1u128 << (127 - self.len as u32);
        [Pfx { addr: self.addr, len: self.len + 1 }, Pfx { addr: self.addr | bit, len: self.len + 1 }]
    }
    pub(super) fn ip(self, v6: bool) -> IpAddr {
        if v6 { Ipv6Addr::from(self.addr).into() } else { Ipv4Addr::from((self.addr >> 96) as u32).into() }
    }
}

/// Protocol classes of a packet of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Tcp,
    Udp,
    Icmp,
    Other,
}
pub(super) const CLASSES: [Class; 4] = [Class::Tcp, Class::Udp, Class::Icmp, Class::Other];

/// A rule as the linter sees it in one family: prefixes and its L4 interval.
pub(super) struct Shape {
    pub(super) src: Pfxs,
    pub(super) dst: Pfxs,
    /// Inclusive intervals of L4 values, sorted and disjoint (`NO_L4` included
    /// when the rule constrains no L4 field); several for a port list.
    pub(super) l4: L4s,
}

/// A rule's L4 intervals: almost always one, kept inline.
pub(super) enum L4s {
    One((u32, u32)),
    Many(Vec<(u32, u32)>),
}

impl std::ops::Deref for L4s {
    type Target = [(u32, u32)];
    fn deref(&self) -> &[(u32, u32)] {
        match self {
            L4s::One(p) => std::slice::from_ref(p),
            L4s::Many(v) => v,
        }
    }
}

impl L4s {
    /// From the first interval's start to the last one's end.
    pub(super) fn hull(&self) -> (u32, u32) {
        match self {
            L4s::One(p) => *p,
            L4s::Many(v) => (v.first().map_or(0, |p| p.0), v.last().map_or(0, |p| p.1)),
        }
    }
    /// Whether any interval overlaps `l`.
    pub(super) fn overlaps(&self, l: (u32, u32)) -> bool {
        self.iter().any(|&m| l4_overlaps(m, l))
    }
    /// Whether any interval of each overlaps one of the other's.
    pub(super) fn overlaps_any(&self, o: &L4s) -> bool {
        match (self, o) {
            (L4s::One(a), L4s::One(b)) => l4_overlaps(*a, *b),
            _ => self.iter().any(|&m| o.overlaps(m)),
        }
    }
}

/// A rule's prefixes on one side, in one family: almost always one, kept
/// inline (an allocation per rule and side was a fifth of the index's time).
/// Several are sorted, with the prefix lengths in use, so that a large set
/// answers "does one of you contain / overlap this prefix?" by binary search.
pub(super) enum Pfxs {
    One(Pfx),
    Many(Vec<Pfx>, Vec<u8>),
}

impl std::ops::Deref for Pfxs {
    type Target = [Pfx];
    fn deref(&self) -> &[Pfx] {
        match self {
            Pfxs::One(p) => std::slice::from_ref(p),
            Pfxs::Many(v, _) => v,
        }
    }
}

/// Lists longer than this are searched, shorter ones scanned.
const SCAN: usize = 16;

impl Pfxs {
    fn many(mut v: Vec<Pfx>) -> Pfxs {
        v.sort_unstable();
        v.dedup();
        let mut lens: Vec<u8> = v.iter().map(|p| p.len).collect();
        lens.sort_unstable();
        lens.dedup();
        Pfxs::Many(v, lens)
    }

    /// Whether one of the prefixes contains `q`.
    pub(super) fn any_contains(&self, q: Pfx) -> bool {
        match self {
            Pfxs::Many(v, lens) if v.len() > SCAN => {
                lens.iter().take_while(|&&l| l <= q.len).any(|&l| v.binary_search(&Pfx { addr: q.addr & Pfx::mask(l), len: l }).is_ok())
            }
            _ => self.iter().any(|p| p.contains(q)),
        }
    }

    /// Whether one of the prefixes overlaps `q` (contains it or lies inside it).
    pub(super) fn any_overlaps(&self, q: Pfx) -> bool {
        match self {
            Pfxs::Many(v, _) if v.len() > SCAN => {
                // Those inside q are a run in sorted order, from the first at or after q.
                let at = v.partition_point(|p| *p < q);
                self.any_contains(q) || v.get(at).is_some_and(|p| q.contains(*p))
            }
            _ => self.iter().any(|p| p.overlaps(q)),
        }
    }
}

pub(super) fn shape(r: &Rule, v6: bool) -> Option<Shape> {
    // A rule by name matches what DNS teaches at run time: no fixed region.
    if !(if v6 { r.families.v6 } else { r.families.v4 }) || !r.fqdn.is_empty() {
        return None;
    }
    let nets = |n: &Option<Vec<IpNet>>| -> Pfxs {
        match n {
            None => Pfxs::One(Pfx { addr: 0, len: 0 }),
            Some(v) => {
                let mut mine = v.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).map(Pfx::of);
                match (mine.next(), mine.next()) {
                    (Some(p), None) => Pfxs::One(p),
                    (first, second) => Pfxs::many(first.into_iter().chain(second).chain(mine).collect()),
                }
            }
        }
    };
    let ranges = r.l4_ranges();
    let l4 = match &*ranges {
        [(lo, _)] if r.l4_any() => L4s::One((*lo as u32, NO_L4)),
        [(lo, hi)] => L4s::One((*lo as u32, *hi as u32)),
        many => L4s::Many(many.iter().map(|&(a, b)| (a as u32, b as u32)).collect()),
    };
    Some(Shape { src: nets(&r.src), dst: nets(&r.dst), l4 })
}

pub(super) fn in_class(r: &Rule, c: Class, v6: bool) -> bool {
    match (r.protocol, c) {
        (Protocol::All, _) => true,
        (Protocol::Tcp, Class::Tcp) | (Protocol::Udp, Class::Udp) => true,
        (Protocol::Icmp, Class::Icmp) => !v6,
        (Protocol::Icmpv6, Class::Icmp) => v6,
        _ => false,
    }
}

/// The L4 values a class can carry.
pub(super) fn class_l4(c: Class) -> (u32, u32) {
    if c == Class::Other { (NO_L4, NO_L4) } else { (0, NO_L4) }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Region {
    pub(super) s: Pfx,
    pub(super) d: Pfx,
    pub(super) l: (u32, u32),
}

pub(super) enum Cover {
    /// Every packet of the region matches one of the candidates.
    Covered,
    /// This piece matches none of them.
    Uncovered(Region),
    /// Too many pieces: undecided.
    Unknown,
}

pub(super) fn l4_overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn overlaps(e: &Shape, r: &Region) -> bool {
    e.l4.overlaps(r.l) && e.src.any_overlaps(r.s) && e.dst.any_overlaps(r.d)
}

/// Whether the candidates together match every packet of `r`.
pub(super) fn cover(r: Region, cands: &[&Shape], budget: &mut Budget) -> Cover {
    if !budget.spend(1 + cands.len()) {
        return Cover::Unknown;
    }
    if cands.is_empty() {
        return Cover::Uncovered(r);
    }
    let here: Vec<&Shape> = cands.iter().copied().filter(|e| overlaps(e, &r)).collect();
    let inside = |e: &Shape| {
        let s_in = e.src.any_contains(r.s);
        let d_in = e.dst.any_contains(r.d);
        (s_in, d_in, e.l4.iter().any(|l| l.0 <= r.l.0 && r.l.1 <= l.1))
    };
    if here.iter().any(|e| inside(e) == (true, true, true)) {
        return Cover::Covered;
    }
    // Cut the region where the first overlapping rule's edge runs through it.
    let Some(e) = here.first() else { return Cover::Uncovered(r) };
    let pieces = match inside(e) {
        (false, _, _) => r.s.halves().map(|s| Region { s, ..r }),
        (_, false, _) => r.d.halves().map(|d| Region { d, ..r }),
        _ => {
            // The first of its intervals that overlaps the region ends or
            // starts inside it (none contains it).
            let l4 = e.l4.iter().find(|&&l| l4_overlaps(l, r.l)).copied().unwrap_or(r.l);
            let at = if l4.0 > r.l.0 { l4.0 } else { l4.1 + 1 };
            [Region { l: (r.l.0, at - 1), ..r }, Region { l: (at, r.l.1), ..r }]
        }
    };
    for p in pieces {
        match cover(p, &here, budget) {
            Cover::Covered => {}
            other => return other,
        }
    }
    Cover::Covered
}

/// Rules whose L4 interval spans more than this many values are "wide".
const NARROW: u32 = 16_384;

/// One distinct destination prefix of the rule set.
struct Node {
    pub(super) pfx: Pfx,
    /// The nearest enclosing prefix of the rule set.
    pub(super) parent: Option<usize>,
    /// Nodes `id + 1 .. end` (in address order) lie inside this prefix.
    pub(super) end: usize,
    /// The rules with this destination prefix, by L4 interval (many rules often
    /// share a destination and differ in their ports, and only those whose
    /// ports overlap are compared): `Index::wide[wide.0..wide.1]` span more
    /// than `NARROW` values (in file order), `Index::narrow[narrow.0..narrow.1]`
    /// are the others as (interval start, position), sorted.
    wide: (u32, u32),
    narrow: (u32, u32),
    /// The longest span (hi - lo) among the narrow ones: an overlapping narrow
    /// interval starts at most this far before a query's start (4,096 rules of
    /// one port each to one destination scanned 1,024 neighbours each without it).
    span: u32,
}

/// The rules' destination prefixes as a tree in address order, per family:
/// the prefixes that overlap a rule's destination are its ancestors (parent
/// links) and its descendants (a contiguous run of nodes). No hashing per query,
/// and a handful of flat arrays (no allocation per rule or node).
pub(super) struct Index {
    nodes: Vec<Node>,
    /// (L4 interval, position): the interval beside the position, so that a
    /// scan reads one array in order instead of each rule's shape.
    /// With each position, its rule's tag (`Index::new`): what a neighbour
    /// test needs, read in order with the interval rather than from the rules.
    wide: Vec<((u32, u32), u32, u8)>,
    narrow: Vec<((u32, u32), u32, u8)>,
    /// The node of each destination prefix of each rule (as in `Shape::dst`):
    /// rule i's are `node_of[first[i]..first[i + 1]]`.
    node_of: Vec<usize>,
    first: Vec<usize>,
}

impl Index {
    /// The index of the rules not marked in `skip`, each entry carrying its
    /// rule's `tags` byte.
    pub(super) fn new(shapes: &[Option<Shape>], skip: &[bool], tags: &[u8]) -> Index {
        let kept = |i: usize| shapes[i].as_ref().filter(|_| !skip.get(i).copied().unwrap_or(false));
        let mut first = Vec::with_capacity(shapes.len() + 1);
        first.push(0);
        for i in 0..shapes.len() {
            first.push(first[first.len() - 1] + kept(i).map_or(0, |s| s.dst.len()));
        }
        let mut entries: Vec<(Pfx, usize, usize)> = Vec::with_capacity(first[shapes.len()]);
        for i in 0..shapes.len() {
            for (k, &d) in kept(i).iter().flat_map(|s| s.dst.iter().enumerate()) {
                entries.push((d, i, k));
            }
        }
        entries.sort_unstable_by_key(|&(p, i, _)| (p.addr, p.len, i));
        let mut nodes: Vec<Node> = Vec::new();
        let mut node_of = vec![0; first[shapes.len()]];
        let (mut wide, mut narrow) = (Vec::new(), Vec::new());
        let mut stack: Vec<usize> = Vec::new();
        for (p, i, k) in entries {
            if nodes.last().is_none_or(|n| n.pfx != p) {
                while let Some(&top) = stack.last() {
                    if nodes[top].pfx.contains(p) {
                        break;
                    }
                    nodes[top].end = nodes.len();
                    stack.pop();
                }
                let (w, n) = (wide.len() as u32, narrow.len() as u32);
                nodes.push(Node { pfx: p, parent: stack.last().copied(), end: 0, wide: (w, w), narrow: (n, n), span: 0 });
                stack.push(nodes.len() - 1);
            }
            let id = nodes.len() - 1;
            node_of[first[i] + k] = id;
            // A port list is indexed by its hull; neighbours are then compared exactly.
            let l4 = shapes[i].as_ref().map_or((0, 0), |s| s.l4.hull());
            // Entries of one prefix are consecutive: each node's runs end here.
            if l4.1 - l4.0 >= NARROW {
                wide.push((l4, i as u32, tags[i]));
                nodes[id].wide.1 += 1;
            } else {
                narrow.push((l4, i as u32, tags[i]));
                nodes[id].narrow.1 += 1;
                nodes[id].span = nodes[id].span.max(l4.1 - l4.0);
            }
        }
        for top in stack {
            nodes[top].end = nodes.len();
        }
        for n in &nodes {
            narrow[n.narrow.0 as usize..n.narrow.1 as usize].sort_unstable();
        }
        Index { nodes, wide, narrow, node_of, first }
    }

    /// The rules of node `id` whose L4 interval overlaps `l4`, to `visit` until
    /// it returns false or the budget runs out; false if stopped.
    fn visit_node(&self, id: usize, l4: (u32, u32), budget: &mut Budget, visit: &mut impl FnMut(usize, u8) -> bool) -> bool {
        let n = &self.nodes[id];
        let wide = &self.wide[n.wide.0 as usize..n.wide.1 as usize];
        if !budget.spend(1 + wide.len()) || !wide.iter().all(|&(l, i, t)| !l4_overlaps(l, l4) || visit(i as usize, t)) {
            return false;
        }
        let narrow = &self.narrow[n.narrow.0 as usize..n.narrow.1 as usize];
        // A narrow interval that overlaps starts at most `span` before l4's start.
        let from = narrow.partition_point(|&((lo, _), _, _)| lo + n.span < l4.0);
        for &(l, i, t) in &narrow[from..] {
            if l.0 > l4.1 {
                break;
            }
            if !budget.spend(1) || (l4_overlaps(l, l4) && !visit(i as usize, t)) {
                return false;
            }
        }
        true
    }

    /// The nodes of rule `i`'s destination prefixes.
    pub(super) fn nodes_of(&self, i: usize) -> &[usize] {
        &self.node_of[self.first[i]..self.first[i + 1]]
    }

    /// Calls `visit` with the position (and tag) of every rule whose destination overlaps
    /// node `id`'s prefix (and, for rules with that prefix or an enclosing one,
    /// whose L4 interval overlaps `l4`; may repeat) until it returns false or
    /// the budget runs out; false if stopped.
    pub(super) fn overlapping(&self, id: usize, l4: (u32, u32), budget: &mut Budget, visit: &mut impl FnMut(usize, u8) -> bool) -> bool {
        let mut up = Some(id);
        while let Some(n) = up {
            if !self.visit_node(n, l4, budget, visit) {
                return false;
            }
            up = self.nodes[n].parent;
        }
        (id + 1..self.nodes[id].end).all(|n| self.visit_node(n, l4, budget, visit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The searched answers of a long prefix list equal the scanned ones, on
    /// nested, touching and equal prefixes.
    #[test]
    fn searched_lists_answer_as_scanned_ones() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pfx = |next: &mut dyn FnMut() -> u64| {
            let len = [0u8, 1, 8, 16, 20, 24, 28, 30, 31, 32][(next() % 10) as usize];
            // Addresses under a few /24s so that prefixes nest and meet.
            let addr = (0xc000_0200u32 | (next() as u32 & 0x0000_03ff)) as u128;
            Pfx { addr: (addr << 96) & Pfx::mask(len), len }
        };
        for _ in 0..200 {
            let v: Vec<Pfx> = (0..100).map(|_| pfx(&mut next)).collect();
            let list = Pfxs::many(v.clone());
            assert!(list.len() > SCAN, "{}", list.len());
            for _ in 0..200 {
                let q = pfx(&mut next);
                assert_eq!(list.any_contains(q), v.iter().any(|p| p.contains(q)), "{q:?} in {v:?}");
                assert_eq!(list.any_overlaps(q), v.iter().any(|p| p.overlaps(q)), "{q:?} in {v:?}");
            }
        }
    }
}
