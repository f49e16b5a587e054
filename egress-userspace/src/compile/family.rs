//! Stages 1 and 2 of the compiler for one address family: each destination
//! prefix's value (its candidate lists, or a class whose PAIR entries hold them
//! per source prefix), with identical lists interned. Pure. See mod.rs.

use egress_common::{DST_SRC_ANY, DstValue, INLINE_LIST, InlineRule, Lists, MAX_PAIR_ENTRIES, NO_LIST};
use foldhash::{HashMap, HashSet};
use ipnet::IpNet;

use super::{
    Prefix,
    ports::{decisive, inline_rule},
};
use crate::rules::{Rule, RuleSet};

pub(super) struct Interner<'a> {
    pub(super) rules: &'a [Rule],
    pub(super) ids: HashMap<Vec<u32>, u32>,
    pub(super) lists: Vec<(Vec<u32>, [bool; 2])>,
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

/// The prefixes of one address field of a rule, in one family (`None` = any).
pub(super) fn prefixes(nets: &Option<Vec<IpNet>>, v6: bool) -> Vec<Prefix> {
    prefix_iter(nets, v6).collect()
}

/// [`prefixes`] without collecting them.
pub(super) fn prefix_iter(nets: &Option<Vec<IpNet>>, v6: bool) -> impl Iterator<Item = Prefix> + '_ {
    let any = nets.is_none().then(|| Prefix::any(v6));
    let listed = nets.iter().flatten().filter(move |n| matches!(n, IpNet::V6(_)) == v6).map(Prefix::of);
    any.into_iter().chain(listed)
}

pub(super) type Family = (Vec<(Prefix, DstValue)>, Vec<(u32, Prefix, Lists)>, Vec<(String, DstValue)>);

/// The rules of `rs` that can match a family's packets.
pub(super) fn family_rules(rs: &RuleSet, v6: bool) -> Vec<&Rule> {
    rs.rules.iter().filter(|r| if v6 { r.families.v6 } else { r.families.v4 }).collect()
}

/// Stages 1 and 2 of one family over `rules` (all of the family's, or, for a
/// recompile, every rule whose destination nests with the edited ones: the
/// destinations inside those get the values a whole compile would give).
/// `fqdn`: the classes of the rules by name too.
pub(super) fn compile_family<'a>(
    rs: &'a RuleSet,
    rules: &[&'a Rule],
    v6: bool,
    fqdn: bool,
    lists: &mut Interner<'a>,
    classes: &mut HashMap<(Vec<u32>, Vec<u32>), u32>,
) -> Family {
    // Destination prefix -> rules listing it (file order), and the lengths in use.
    let mut by_dst: HashMap<Prefix, Vec<u32>> = HashMap::default();
    by_dst.reserve(rules.iter().map(|r| r.dst.as_ref().map_or(1, Vec::len)).sum());
    let mut src_of: HashMap<u32, Vec<Prefix>> = HashMap::default();
    for r in rules {
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
    let mut by_name = Vec::new();
    let mut cx = ClassCx { rs, v6, src_of: &src_of, src_any: &src_any, lists, classes, emitted: &mut emitted };
    if fqdn && rules.iter().any(|r| !r.fqdn.is_empty()) {
        let all: Vec<u32> = rules.iter().filter(|r| !r.fqdn.is_empty()).map(|r| r.index).collect();
        by_name.push(("".to_string(), cx.dst_value(all.clone(), &all, &mut pairs)));
        for p in rs.patterns() {
            let mine: Vec<u32> = rules.iter().filter(|r| r.fqdn.iter().any(|q| q == p)).map(|r| r.index).collect();
            by_name.push((p.to_string(), cx.dst_value(mine.clone(), &mine, &mut pairs)));
        }
    }
    (dsts, pairs, by_name)
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
