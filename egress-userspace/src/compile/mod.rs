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
use foldhash::{HashMap, HashSet};

use egress_common::{
    DST_SRC_ANY, DnsClass, DstValue, INLINE_LIST, InlineRule, ListSlot, Lists, MAX_DST_ENTRIES, MAX_LIST_SLOTS, MAX_PAIR_ENTRIES,
    MAX_RANGES, NO_LIST, PCLASS_COUNT, PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, PortRange, SpanV4, SpanV6,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::rules::{Protocol, Rule, RuleSet};

pub mod flat;
pub mod place;

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
    fn truncate(&self, len: u8) -> Prefix {
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
    /// Stage 2 as the program reads it: SDIR_V4/SSPAN_V4, SDIR_V6/SSPAN_V6
    /// and PAIR_LISTS (index 0 unused: no candidates).
    pub src_v4: flat::Table<SpanV4>,
    pub src_v6: flat::Table<SpanV6>,
    pub pair_lists: Vec<Lists>,
    /// (destination class, source prefix, candidate lists)
    pub pair_v4: Vec<(u32, Prefix, Lists)>,
    pub pair_v6: Vec<(u32, Prefix, Lists)>,
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

/// The protocol classes a packet of a family can have.
const PCLASSES_V4: [u8; 4] = [PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, PCLASS_ICMP];
const PCLASSES_V6: [u8; 4] = [PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, PCLASS_ICMPV6];

fn applies_to_class(r: &Rule, pclass: u8) -> bool {
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
fn inline_rule(r: &Rule) -> InlineRule {
    let classes = (0..=PCLASS_ICMPV6).filter(|&c| applies_to_class(r, c)).fold(0u8, |m, c| m | 1 << c);
    let (lo, hi) = r.l4_ranges()[0];
    InlineRule { rule: r.index, action: r.code() as u8, classes, l4_any: r.l4_any() as u8, _pad: 0, lo, hi }
}

struct Interner<'a> {
    rules: &'a [Rule],
    ids: HashMap<Vec<u32>, u32>,
    lists: Vec<(Vec<u32>, [bool; 2])>,
}

impl Interner<'_> {
    /// Splits a candidate list (sorted rule slots) into the destination's own rules
    /// (`own`, sorted) and the inherited rest, and interns both halves.
    fn split(&mut self, cands: &[u32], own: &[u32], v6: bool) -> Lists {
        let (mine, inherited): (Vec<u32>, Vec<u32>) = cands.iter().partition(|i| own.binary_search(i).is_ok());
        let (own, inline) = match mine.as_slice() {
            [one] if self.rules[*one as usize - 1].l4_ranges().len() == 1 => (INLINE_LIST, inline_rule(&self.rules[*one as usize - 1])),
            _ => (self.id_or_none(mine, v6), InlineRule::default()),
        };
        Lists { own, inherited_first: inherited.first().copied().unwrap_or(u32::MAX), inherited: self.id_or_none(inherited, v6), inline }
    }
    fn id_or_none(&mut self, list: Vec<u32>, v6: bool) -> u32 {
        if list.is_empty() { NO_LIST } else { self.id(list, v6) }
    }
    fn id(&mut self, list: Vec<u32>, v6: bool) -> u32 {
        let n = self.lists.len() as u32;
        let id = *self.ids.entry(list.clone()).or_insert(n);
        if id == n {
            self.lists.push((list, [false; 2]));
        }
        self.lists[id as usize].1[v6 as usize] = true;
        id
    }
}

/// Compiles a rule set into map entries.
pub fn compile(rs: &RuleSet) -> Result<Compiled, CompileError> {
    let mut out = Compiled { counter_slots: rs.rules.len() as u32 + 1, default_action: rs.default_code(), ..Default::default() };
    let mut lists = Interner { rules: &rs.rules, ids: HashMap::default(), lists: Vec::new() };
    // Destination classes are interned by (R(d), own rules) too: same rules, same PAIR table.
    let mut classes: HashMap<(Vec<u32>, Vec<u32>), u32> = HashMap::default();
    for v6 in [false, true] {
        let (dsts, pairs, fqdn) = compile_family(rs, v6, &mut lists, &mut classes);
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
    out.list_slots = vec![ListSlot::default(); lists.lists.len() * PCLASS_COUNT as usize];
    for (id, (list, fams)) in lists.lists.iter().enumerate() {
        let rules: Vec<&Rule> = list.iter().map(|&i| &rs.rules[i as usize - 1]).collect();
        let mut classes: Vec<u8> = Vec::new();
        if fams[0] {
            classes.extend(PCLASSES_V4);
        }
        if fams[1] {
            classes.extend(PCLASSES_V6.iter().filter(|c| !classes.contains(c)).collect::<Vec<_>>());
        }
        for c in classes {
            out.list_slots[id * PCLASS_COUNT as usize + c as usize] = list_slot(c, &rules, &mut out.ranges);
        }
    }
    for (map, count, cap) in [
        ("IPv4 destination prefix", out.dst_v4.len(), MAX_DST_ENTRIES),
        ("IPv6 destination prefix", out.dst_v6.len(), MAX_DST_ENTRIES),
        ("IPv4 (destination class, source prefix)", out.pair_v4.len(), MAX_PAIR_ENTRIES),
        ("IPv6 (destination class, source prefix)", out.pair_v6.len(), MAX_PAIR_ENTRIES),
        (egress_common::MAP_LISTS, out.list_slots.len(), MAX_LIST_SLOTS),
        (egress_common::MAP_RANGES, out.ranges.len(), MAX_RANGES),
    ] {
        if count > cap as usize {
            return Err(CompileError::TooLarge { map, count, cap });
        }
    }
    let mut ids = flat::ClassIds::new();
    out.flat_v4 = flat::table_v4(&out.dst_v4, &mut ids)?;
    out.flat_v6 = flat::table_v6(&out.dst_v6, &mut ids)?;
    out.dst_classes = ids.values;
    let mut ids = flat::ListIds::new();
    out.src_v4 = flat::sources_v4(&out.pair_v4, classes.len() as u32, &mut ids)?;
    out.src_v6 = flat::sources_v6(&out.pair_v6, classes.len() as u32, &mut ids)?;
    out.pair_lists = ids.values;
    Ok(out)
}

/// The prefixes of one address field of a rule, in one family (`None` = any).
fn prefixes(nets: &Option<Vec<IpNet>>, v6: bool) -> Vec<Prefix> {
    match nets {
        None => vec![Prefix::any(v6)],
        Some(v) => v.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).map(Prefix::of).collect(),
    }
}

type Family = (Vec<(Prefix, DstValue)>, Vec<(u32, Prefix, Lists)>, Vec<(String, DstValue)>);

fn compile_family<'a>(rs: &'a RuleSet, v6: bool, lists: &mut Interner<'a>, classes: &mut HashMap<(Vec<u32>, Vec<u32>), u32>) -> Family {
    let rules: Vec<&Rule> = rs.rules.iter().filter(|r| if v6 { r.families.v6 } else { r.families.v4 }).collect();
    // Destination prefix -> rules listing it (file order), and the lengths in use.
    let mut by_dst: HashMap<Prefix, Vec<u32>> = HashMap::default();
    by_dst.reserve(rules.iter().map(|r| r.dst.as_ref().map_or(1, Vec::len)).sum());
    let mut src_of: HashMap<u32, Vec<Prefix>> = HashMap::default();
    for r in &rules {
        for p in prefixes(&r.dst, v6) {
            by_dst.entry(p).or_default().push(r.index);
        }
        src_of.insert(r.index, prefixes(&r.src, v6));
    }
    let mut lens: Vec<u8> = by_dst.keys().map(|p| p.len).collect();
    lens.sort_unstable();
    lens.dedup();

    let mut dst_keys: Vec<&Prefix> = by_dst.keys().collect();
    dst_keys.sort_unstable();
    let mut dsts = Vec::with_capacity(dst_keys.len());
    let mut pairs = Vec::new();
    let mut emitted: HashSet<u32> = HashSet::default();
    let any = Prefix::any(v6);
    // The enclosing destinations of the current one (sorted order visits a
    // prefix before everything inside it), each with its candidate list pruned
    // to the rules that decide some packet (`decisive`), or None when a rule
    // with a source prefix is among its candidates (those take the exact path).
    // Lists of the chain by id; destinations with the same parent list and the
    // same own rules get the same lists (a set's million entries in one rule:
    // one computation, not a million).
    let mut rd_lists: Vec<Vec<u32>> = Vec::new();
    let mut memo: HashMap<(u32, Vec<u32>), (u32, Lists)> = HashMap::default();
    let src_any: HashSet<u32> = src_of.iter().filter(|(_, s)| s.contains(&any)).map(|(i, _)| *i).collect();
    let mut chain: Vec<(Prefix, Option<u32>)> = Vec::new();
    for d in dst_keys {
        enclosing_only(&mut chain, d);
        let mut own: Vec<u32> = by_dst[d].clone();
        own.dedup();
        // All candidates match any source: R(d) = R(parent) + own rules, and only
        // the rules that win some protocol class and L4 value (or are a class's
        // no-L4 rule) can decide a packet; the others are dropped. Deep nesting
        // (a rule at every length of a chain, many chains) made R(d) tens of
        // thousands of rules long for every d without this.
        let parent = chain.last().map(|(_, r)| *r);
        if parent.is_none_or(|p| p.is_some()) && own.iter().all(|i| src_any.contains(i)) {
            let key = (parent.flatten().unwrap_or(u32::MAX), own);
            let (id, l) = match memo.get(&key) {
                Some(v) => *v,
                None => {
                    let mut rd: Vec<u32> = rd_lists.get(key.0 as usize).cloned().unwrap_or_default();
                    rd.extend(&key.1);
                    rd.sort_unstable();
                    rd.dedup();
                    let rd = decisive(&rs.rules, rd, v6);
                    let l = lists.split(&rd, &key.1, v6);
                    rd_lists.push(rd);
                    let v = (rd_lists.len() as u32 - 1, l);
                    memo.insert(key, v);
                    v
                }
            };
            dsts.push((*d, DstValue { lists: l, flags: DST_SRC_ANY }));
            chain.push((*d, Some(id)));
            continue;
        }
        chain.push((*d, None));
        // R(d): rules with a destination prefix containing d (d's ancestors).
        let mut rd: Vec<u32> = Vec::new();
        for &l in lens.iter().take_while(|&&l| l <= d.len) {
            if let Some(v) = by_dst.get(&d.truncate(l)) {
                rd.extend(v);
            }
        }
        rd.sort_unstable();
        rd.dedup();
        let mut cx =
            ClassCx { rs, v6, src_of: &src_of, src_any: &src_any, lists: &mut *lists, classes: &mut *classes, emitted: &mut emitted };
        let v = cx.dst_value(rd, &own, &mut pairs);
        dsts.push((*d, v));
        if pairs.len() > MAX_PAIR_ENTRIES as usize {
            // Said by `compile` with the map's name; no need to build the rest.
            return (dsts, pairs, Vec::new());
        }
    }
    // Rules by name: each pattern is a destination class of its own, holding
    // the rules that name it (id 0: every rule by name, for the program's
    // "could a rule by name come first?" probe).
    let mut fqdn = Vec::new();
    let mut cx = ClassCx { rs, v6, src_of: &src_of, src_any: &src_any, lists, classes, emitted: &mut emitted };
    if rules.iter().any(|r| !r.fqdn.is_empty()) {
        let all: Vec<u32> = rules.iter().filter(|r| !r.fqdn.is_empty()).map(|r| r.index).collect();
        fqdn.push(("".to_string(), cx.dst_value(all.clone(), &all, &mut pairs)));
        for p in rs.patterns() {
            let mine: Vec<u32> = rules.iter().filter(|r| r.fqdn.iter().any(|q| q == p)).map(|r| r.index).collect();
            fqdn.push((p.to_string(), cx.dst_value(mine.clone(), &mine, &mut pairs)));
        }
    }
    (dsts, pairs, fqdn)
}

/// What [`ClassCx::dst_value`] shares across destinations of a family.
struct ClassCx<'a, 'b> {
    rs: &'a RuleSet,
    v6: bool,
    src_of: &'b HashMap<u32, Vec<Prefix>>,
    src_any: &'b HashSet<u32>,
    lists: &'b mut Interner<'a>,
    classes: &'b mut HashMap<(Vec<u32>, Vec<u32>), u32>,
    emitted: &'b mut HashSet<u32>,
}

impl ClassCx<'_, '_> {
    /// The stage-1 value of a destination whose candidate rules are `rd`
    /// (sorted), `own` of them its own: the candidate lists directly when every
    /// candidate matches any source, else a class whose PAIR entries (appended
    /// to `pairs` the first time the class is seen) hold them per source.
    fn dst_value(&mut self, rd: Vec<u32>, own: &[u32], pairs: &mut Vec<(u32, Prefix, Lists)>) -> DstValue {
        let (rs, v6) = (self.rs, self.v6);
        if rd.iter().all(|i| self.src_any.contains(i)) {
            return DstValue { lists: self.lists.split(&rd, own, v6), flags: DST_SRC_ANY };
        }
        let n = self.classes.len() as u32;
        let class = *self.classes.entry((rd.clone(), own.to_vec())).or_insert(n);
        let class_value = Lists { own: class, inherited: NO_LIST, inherited_first: u32::MAX, inline: InlineRule::default() };
        let v = DstValue { lists: class_value, flags: 0 };
        // Same R(d) as an earlier class of this family: its PAIR entries serve this one too.
        if !self.emitted.insert(class) {
            return v;
        }
        // S(d) and, per s, the rules of R(d) whose source contains s: as for
        // destinations, in sorted order with the chain of enclosing sources, so
        // that s's candidates are its parent's plus the rules listing s (one
        // pass over R(d) per s made 100k rules from distinct sources to one
        // destination quadratic). Pruned to the decisive rules, as above: every
        // candidate matches the packet's addresses, so only L4 decides.
        let mut by_src: HashMap<Prefix, Vec<u32>> = HashMap::default();
        for &i in &rd {
            for s in &self.src_of[&i] {
                by_src.entry(*s).or_default().push(i);
            }
        }
        let mut sd: Vec<(Prefix, Vec<u32>)> = by_src.into_iter().collect();
        sd.sort_unstable_by_key(|(p, _)| *p);
        let mut schain: Vec<(Prefix, Vec<u32>)> = Vec::new();
        for (s, mine) in sd {
            enclosing_only(&mut schain, &s);
            let mut cands = schain.last().map(|(_, c)| c.clone()).unwrap_or_default();
            cands.extend(mine);
            cands.sort_unstable();
            cands.dedup();
            let cands = decisive(&rs.rules, cands, v6);
            pairs.push((class, s, self.lists.split(&cands, own, v6)));
            if pairs.len() > MAX_PAIR_ENTRIES as usize {
                return v;
            }
            schain.push((s, cands));
        }
        v
    }
}

/// Drops the prefixes of a chain (outermost first, visited in sorted order)
/// that do not contain `p`: what stays encloses it, innermost last.
fn enclosing_only<T>(chain: &mut Vec<(Prefix, T)>, p: &Prefix) {
    while chain.last().is_some_and(|(q, _)| !q.contains(p)) {
        chain.pop();
    }
}

/// The rules of a candidate list (sorted slots) that decide some packet: per
/// protocol class of the family, the winners of the first-match painting of
/// their L4 intervals and the first rule without an L4 condition. Dropping the
/// others changes no lookup (a rule that wins nowhere is never the first match).
fn decisive(rules: &[Rule], list: Vec<u32>, v6: bool) -> Vec<u32> {
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
fn list_slot(pclass: u8, rules: &[&Rule], ranges: &mut Vec<PortRange>) -> ListSlot {
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
fn flat_intervals<'a>(rules: impl Iterator<Item = &'a Rule>) -> (Vec<(u32, u32)>, Vec<usize>) {
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

#[cfg(test)]
mod tests;
