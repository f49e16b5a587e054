//! The rule compiler: a validated [`RuleSet`] -> the entries of the lookup maps.
//! Pure: no syscalls. See ARCHITECTURE.md for the design; in short, per family:
//!
//! 1. Destination classes. Every distinct destination prefix `d` of the rule set
//!    is a class; a packet falls into the class of its longest matching prefix.
//!    The rules that can match it are exactly those with a destination prefix
//!    containing `d` (all matching prefixes are nested, so they are `d`'s
//!    ancestors): `R(d)`, in file order.
//! 2. Source pairs. Within `R(d)`, the same argument on the source prefixes
//!    `S(d)` of those rules: for each `s` in `S(d)`, the candidates are the rules
//!    of `R(d)` with a source containing `s`. When every rule of `R(d)` matches
//!    any source, the PAIR stage is skipped (DST_SRC_ANY).
//! 3. Ports. For each distinct candidate list and protocol class, first match is
//!    resolved into disjoint intervals of the 16-bit port (or ICMP type/code)
//!    space, each written as a few LPM prefixes.
//!
//! Identical rule lists are interned, so destinations that share their rules
//! share one PAIR class and one set of PORTS entries.

// foldhash: the compiler hashes millions of small keys; SipHash's DoS resistance
// buys nothing for a file the operator wrote.
use foldhash::HashMap;

use egress_common::{
    DST_SRC_ANY, DnsClass, DstValue, InlineRule, ListSlot, Lists, MAX_DST_ENTRIES, MAX_LIST_SLOTS, MAX_PAIR_ENTRIES, MAX_RANGES, NO_LIST,
    PCLASS_COUNT, PortRange, SpanV4, SpanV6,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::rules::{Rule, RuleSet};

mod family;
pub mod flat;
pub mod incremental;
pub mod model;
pub mod place;
mod ports;

use family::{Interner, compile_family, family_rules};
pub use ports::first_match_intervals;
use ports::{PCLASSES_V4, PCLASSES_V6, list_slot};

/// A prefix as (address bytes, length): IPv4 in the first 4 bytes, the rest zero.
/// Fixed-size so that the compiler's many truncations allocate nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: [u8; 16],
    pub len: u8,
    pub v6: bool,
}

impl Prefix {
    fn of(net: &IpNet) -> Prefix {
        let mut addr = [0u8; 16];
        match net {
            IpNet::V4(n) => {
                addr[..4].copy_from_slice(&n.network().octets());
                Prefix { addr, len: n.prefix_len(), v6: false }
            }
            IpNet::V6(n) => Prefix { addr: n.network().octets(), len: n.prefix_len(), v6: true },
        }
    }
    fn any(v6: bool) -> Prefix {
        Prefix { addr: [0; 16], len: 0, v6 }
    }
    /// This prefix cut to `len` bits.
    pub(super) fn truncate(&self, len: u8) -> Prefix {
        let mut addr = self.addr;
        for (i, b) in addr.iter_mut().enumerate() {
            let bit = i * 8;
            if bit >= len as usize {
                *b = 0;
            } else if bit + 8 > len as usize {
                *b &= 0xffu8 << (8 - (len as usize - bit));
            }
        }
        Prefix { addr, len, v6: self.v6 }
    }
    /// `self` contains `other`.
    fn contains(&self, other: &Prefix) -> bool {
        self.len <= other.len && other.truncate(self.len) == *self
    }
    pub fn to_net(&self) -> IpNet {
        if !self.v6 {
            let a: [u8; 4] = self.addr[..4].try_into().unwrap_or_default();
            IpNet::V4(Ipv4Net::new(a.into(), self.len).unwrap_or_default())
        } else {
            IpNet::V6(Ipv6Net::new(self.addr.into(), self.len).unwrap_or_default())
        }
    }
}

/// Everything the dataplane writes into the maps for one rule set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Stage 1 as the compiler resolves it: each distinct destination prefix
    /// and its value. The program reads it flattened (below).
    pub dst_v4: Vec<(Prefix, DstValue)>,
    pub dst_v6: Vec<(Prefix, DstValue)>,
    /// Stage 1 as the program reads it: DIR_V4/SPAN_V4, DIR_V6/SPAN_V6 and
    /// DST_CLASSES (index 0 unused: no class).
    pub flat_v4: flat::Table<SpanV4>,
    pub flat_v6: flat::Table<SpanV6>,
    pub dst_classes: Vec<DstValue>,
    /// DST_CLASSES' values to their ids, for the next recompile (empty when
    /// a recompile renumbered the values).
    pub class_index: HashMap<DstValue, u32>,
    /// Stage 2 as the program reads it: SDIR_V4/SSPAN_V4, SDIR_V6/SSPAN_V6
    /// and PAIR_LISTS (index 0 unused: no candidates).
    pub src_v4: flat::Table<SpanV4>,
    pub src_v6: flat::Table<SpanV6>,
    pub pair_lists: Vec<Lists>,
    /// (destination class, source prefix, candidate lists)
    pub pair_v4: Vec<(u32, Prefix, Lists)>,
    pub pair_v6: Vec<(u32, Prefix, Lists)>,
    /// Destination classes with PAIR entries (ids `0..pair_classes`).
    pub pair_classes: u32,
    /// LISTS, dense: index `list * PCLASS_COUNT + class`.
    pub list_slots: Vec<ListSlot>,
    /// RANGES: each list slot's sorted, disjoint intervals, one run after another.
    pub ranges: Vec<PortRange>,
    /// Size of the COUNTERS map: rules + 1 (slot 0 = default policy).
    pub counter_slots: u32,
    pub default_action: u32,
    /// Rules by name: the union of every pattern's rules (pattern "", id 0)
    /// first, then each pattern in order of first appearance.
    pub fqdn: Vec<FqdnClass>,
}

/// A pattern's entries: DNS_PATTERNS (by its keyed hash, written at load,
/// since the key belongs to the attachment) and DNS_CLASSES (by `id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FqdnClass {
    pub pattern: String,
    pub id: u64,
    /// The first rule naming the pattern and its action code.
    pub first_rule: u32,
    pub first_action: u32,
    pub class: DnsClass,
}

impl Compiled {
    /// Every table within its map's capacity.
    fn within_caps(&self) -> Result<(), CompileError> {
        for (map, count, cap) in [
            ("IPv4 destination prefix", self.dst_v4.len(), MAX_DST_ENTRIES),
            ("IPv6 destination prefix", self.dst_v6.len(), MAX_DST_ENTRIES),
            ("IPv4 (destination class, source prefix)", self.pair_v4.len(), MAX_PAIR_ENTRIES),
            ("IPv6 (destination class, source prefix)", self.pair_v6.len(), MAX_PAIR_ENTRIES),
            (egress_common::MAP_LISTS, self.list_slots.len(), MAX_LIST_SLOTS),
            (egress_common::MAP_RANGES, self.ranges.len(), MAX_RANGES),
        ] {
            if count > cap as usize {
                return Err(CompileError::TooLarge { map, count, cap });
            }
        }
        Ok(())
    }

    pub fn entry_counts(&self) -> [(&'static str, usize); 12] {
        [
            (egress_common::MAP_DIR_V4, self.flat_v4.dir.len()),
            (egress_common::MAP_SPAN_V4, self.flat_v4.spans.len()),
            (egress_common::MAP_DIR_V6, self.flat_v6.dir.len()),
            (egress_common::MAP_SPAN_V6, self.flat_v6.spans.len()),
            // DST_CLASSES and PAIR_LISTS: their values, not the unused index 0.
            (egress_common::MAP_DST_CLASSES, self.dst_classes.len().saturating_sub(1)),
            (egress_common::MAP_SDIR_V4, self.src_v4.dir.len()),
            (egress_common::MAP_SSPAN_V4, self.src_v4.spans.len()),
            (egress_common::MAP_SDIR_V6, self.src_v6.dir.len()),
            (egress_common::MAP_SSPAN_V6, self.src_v6.spans.len()),
            (egress_common::MAP_PAIR_LISTS, self.pair_lists.len().saturating_sub(1)),
            (egress_common::MAP_LISTS, self.list_slots.len()),
            (egress_common::MAP_RANGES, self.ranges.len()),
        ]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("the rule set compiles to {count} {map} entries, more than its capacity of {cap}; {}", why_too_large(map))]
    TooLarge { map: &'static str, count: usize, cap: u32 },
    #[error(
        "the rule set's prefixes crowd {0} past its bound ({chunks} chunks of 256 entries with buckets of {buckets} spans); split the sets across interfaces, or list covering prefixes",
        chunks = egress_common::DIR_MAX_CHUNKS,
        buckets = egress_common::BUCKET_LIMIT
    )]
    TooCrowded(&'static str),
}

impl From<flat::TooCrowded> for CompileError {
    fn from(e: flat::TooCrowded) -> Self {
        CompileError::TooCrowded(e.0)
    }
}

/// What usually fills a map past its capacity.
fn why_too_large(map: &str) -> &'static str {
    if map.ends_with("destination prefix") {
        "each distinct destination prefix is an entry, every entry of the sets the rules name included: split the sets across interfaces, or list covering prefixes"
    } else {
        "the usual cause is many rules with a specific source combined with many rules with a \
         specific destination (their cross product is precomputed, see ARCHITECTURE.md)"
    }
}

/// Compiles a rule set into map entries.
pub fn compile(rs: &RuleSet) -> Result<Compiled, CompileError> {
    let mut out = Compiled { counter_slots: rs.rules.len() as u32 + 1, default_action: rs.default_code(), ..Default::default() };
    let mut lists = Interner { rules: &rs.rules, ids: HashMap::default(), lists: Vec::new() };
    // Destination classes are interned by (R(d), own rules) too: same rules, same PAIR table.
    let mut classes: HashMap<(Vec<u32>, Vec<u32>), u32> = HashMap::default();
    for v6 in [false, true] {
        let (dsts, pairs, fqdn) = compile_family(rs, &family_rules(rs, v6), v6, true, &mut lists, &mut classes);
        for (k, (p, v)) in fqdn.into_iter().enumerate() {
            if out.fqdn.len() <= k {
                let id = if p.is_empty() { 0 } else { crate::rules::pattern_id(&p) };
                let first = rs.rules.iter().find(|r| r.fqdn.contains(&p));
                let (first_rule, first_action) = first.map_or((0, 0), |r| (r.index, r.code()));
                let none = DstValue {
                    lists: Lists { own: NO_LIST, inherited: NO_LIST, inherited_first: u32::MAX, inline: InlineRule::default() },
                    flags: DST_SRC_ANY,
                };
                out.fqdn.push(FqdnClass { pattern: p, id, first_rule, first_action, class: DnsClass { v4: none, v6: none } });
            }
            if v6 {
                out.fqdn[k].class.v6 = v;
            } else {
                out.fqdn[k].class.v4 = v;
            }
        }
        if v6 {
            out.dst_v6 = dsts;
            out.pair_v6 = pairs;
        } else {
            out.dst_v4 = dsts;
            out.pair_v4 = pairs;
        }
    }
    append_list_slots(rs, &lists.lists, &mut out);
    out.pair_classes = classes.len() as u32;
    out.within_caps()?;
    let mut ids = flat::ClassIds::new();
    out.flat_v4 = flat::table_v4(&out.dst_v4, &mut ids)?;
    out.flat_v6 = flat::table_v6(&out.dst_v6, &mut ids)?;
    (out.dst_classes, out.class_index) = ids.into_parts();
    let mut ids = flat::ListIds::new();
    out.src_v4 = flat::sources_v4(&out.pair_v4, out.pair_classes, &mut ids)?;
    out.src_v6 = flat::sources_v6(&out.pair_v6, out.pair_classes, &mut ids)?;
    out.pair_lists = ids.values;
    Ok(out)
}

/// LISTS and RANGES for interned candidate lists, appended: list `k` of
/// `lists` gets id `out.list_slots.len() / PCLASS_COUNT + k`.
fn append_list_slots(rs: &RuleSet, lists: &[(Vec<u32>, [bool; 2])], out: &mut Compiled) {
    let base = out.list_slots.len();
    out.list_slots.resize(base + lists.len() * PCLASS_COUNT as usize, ListSlot::default());
    for (id, (list, fams)) in lists.iter().enumerate() {
        let rules: Vec<&Rule> = list.iter().map(|&i| &rs.rules[i as usize - 1]).collect();
        let mut classes: Vec<u8> = Vec::new();
        if fams[0] {
            classes.extend(PCLASSES_V4);
        }
        if fams[1] {
            classes.extend(PCLASSES_V6.iter().filter(|c| !classes.contains(c)).collect::<Vec<_>>());
        }
        for c in classes {
            out.list_slots[base + id * PCLASS_COUNT as usize + c as usize] = list_slot(c, &rules, &mut out.ranges);
        }
    }
}

#[cfg(test)]
mod tests;
