//! The linter: warnings about a valid rule file (pure: no I/O, no syscalls).
//!
//! - `shadowed`: a rule no packet can reach, because the rules before it match
//!   every packet it would match, alone or together. Decided exactly: the rule's
//!   region (per address family and protocol class: source prefix x destination
//!   prefix x L4 value) is split where an earlier rule's edge cuts it until every
//!   piece is inside some earlier rule (shadowed) or outside all of them (a
//!   witness packet that reaches the rule; the tests hold it to the reference).
//! - `duplicate`: the same match as an earlier rule (a special case of shadowed).
//! - `redundant`: the rule's action is the default policy's and no later rule
//!   with the other action overlaps it: deleting it changes no verdict.
//! - `broad-allow`: an allow rule to any destination (0.0.0.0/0, ::/0, or no
//!   `dst`): hardening advice.
//! - `empty-deny`: no rules under `default_policy = "deny"`: everything is
//!   blocked, IPv6 neighbour discovery included.
//! - sets (`sets.rs`): `empty-set`, `unused-set`, `never-matches` (a rule its
//!   sets leave no address family), `set-entry-covered` (set entries an
//!   earlier rule of the other action covers: a blocklist entry an earlier
//!   allow lets through).
//! - rules by name (`dns.rs`): `no-resolver` (a rule by name whose names no
//!   resolver could ever answer: queries to every `[dns]` resolver are denied).
//!   Rules by name take no part in the shadowing checks: what they match is
//!   learned at run time.
//! - `unchecked` (once per file): the rules whose share of the file's work
//!   bound ran out before their check ended (`FILE_WORK`): the linter's cost is
//!   bounded whatever the file holds.
//!
//! Candidates come from a tree of the rules' destination prefixes in address
//! order (ancestors by parent links, descendants as a run of nodes; within one
//! prefix, by L4 interval), so a rule is only compared with the rules whose
//! destinations and ports overlap its own.

mod dns;
mod region;
mod sets;

/// Rule sets at least this large are linted on all CPUs; smaller ones in the
/// calling thread (threads cost more than they save there, and a process that
/// never had threads joins a mount namespace without waiting).
const PARALLEL_FROM: usize = 10_000;

use ipnet::IpNet;
use region::{Budget, CLASSES, Class, Cover, Index, L4s, NO_L4, Region, Shape, class_l4, cover, in_class, l4_overlaps, shape};

use crate::{
    reference::{L4, PacketMeta},
    rules::{Action, Rule, RuleSet},
};

/// One warning (`egress check --json`: `{"line","rule","kind","message"}`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub line: usize,
    /// The rule's name; null for a warning about the whole file.
    pub rule: Option<String>,
    pub kind: &'static str,
    pub message: String,
}

/// A packet of `r` in family `v6` and class `c`: its first addresses and L4 value.
fn packet(r: &Region, v6: bool, c: Class) -> PacketMeta {
    let proto = match c {
        Class::Tcp => 6,
        Class::Udp => 17,
        Class::Icmp if v6 => 58,
        Class::Icmp => 1,
        Class::Other => 47,
    };
    let v = r.l.0;
    let l4 = match c {
        _ if v == NO_L4 => L4::None,
        Class::Tcp | Class::Udp => L4::Ports { dport: v as u16 },
        Class::Icmp => L4::Icmp { ty: (v >> 8) as u8, code: v as u8 },
        Class::Other => L4::None,
    };
    PacketMeta { src: r.s.ip(v6), dst: r.d.ip(v6), proto, l4 }
}

/// What the exact check found for one rule.
pub enum Reach {
    /// A packet this rule decides (no earlier rule matches it).
    Witness(PacketMeta),
    /// No packet reaches the rule: the earlier rules that overlap it (positions).
    Shadowed(Vec<usize>),
    /// The rule matches no packet of a family it is valid for (cannot happen
    /// after validation), or the check ran out of budget.
    Unknown,
}

/// Per family: the rules' shapes and the destination index.
struct Family {
    v6: bool,
    shapes: Vec<Option<Shape>>,
    /// Per rule, the protocol classes it matches in this family (bit `c as u8`).
    classes: Vec<u8>,
    /// The index; each entry carries its rule's tag: the classes, `ALLOW` and
    /// `SRC_ANY` (a source prefix is the whole family), so that comparing
    /// neighbours reads one array in order, not the rules (most rules match any
    /// source, and then need no shape read at all).
    index: Index,
}

const CLASS_BITS: u8 = 0x0f;
const ALLOW: u8 = 0x10;
const SRC_ANY: u8 = 0x20;

struct Linter<'a> {
    rs: &'a RuleSet,
    fams: [Family; 2],
    /// Per rule: the earlier rule with the same match, if any. A duplicate is
    /// shadowed by its original and neither covers nor shields anything the
    /// original does not, so the index leaves duplicates out (thousands of copies
    /// of one broad rule made every neighbour walk quadratic).
    dup_of: Vec<Option<usize>>,
    /// The index of the last rule by name (`dst_fqdn`) that allows, and of the
    /// last that denies: a rule before it of the other action is shielded.
    last_by_name: [Option<usize>; 2],
}

impl<'a> Linter<'a> {
    fn new(rs: &'a RuleSet) -> Linter<'a> {
        let dup_of = duplicates(rs);
        let last = |a: Action| rs.rules.iter().rposition(|r| !r.fqdn.is_empty() && r.action == a);
        let last_by_name = [last(Action::Allow), last(Action::Deny)];
        let skip: Vec<bool> = dup_of.iter().map(Option::is_some).collect();
        let fam = |v6| {
            let shapes: Vec<Option<Shape>> = rs.rules.iter().map(|r| shape(r, v6)).collect();
            let classes: Vec<u8> =
                rs.rules.iter().map(|r| CLASSES.iter().filter(|&&c| in_class(r, c, v6)).fold(0, |m, &c| m | 1 << c as u8)).collect();
            let tags: Vec<u8> = (0..rs.rules.len())
                .map(|i| {
                    let any_src = shapes[i].as_ref().is_some_and(|s| s.src.iter().any(|p| p.len == 0));
                    classes[i] | if rs.rules[i].action == Action::Allow { ALLOW } else { 0 } | if any_src { SRC_ANY } else { 0 }
                })
                .collect();
            let index = Index::new(&shapes, &skip, &tags);
            Family { v6, shapes, classes, index }
        };
        if rs.rules.len() < PARALLEL_FROM {
            return Linter { rs, fams: [fam(false), fam(true)], dup_of, last_by_name };
        }
        let (v4, v6) = std::thread::scope(|s| {
            let v6 = s.spawn(|| fam(true));
            (fam(false), v6.join())
        });
        Linter { rs, fams: [v4, v6.unwrap_or_else(|_| fam(true))], dup_of, last_by_name }
    }

    /// Calls `visit` with the rules (and their tags) that overlap rule `i` in
    /// family `f` (may repeat) until it returns false or the
    /// budget runs out; false if stopped.
    fn each_neighbour(&self, f: &Family, i: usize, budget: &mut Budget, mut visit: impl FnMut(usize, u8) -> bool) -> bool {
        let Some(me) = &f.shapes[i] else { return true };
        let (mine, any_src) = (f.classes[i], me.src.iter().any(|p| p.len == 0));
        // The index has compared the L4 intervals already (a port list's hull:
        // then its intervals are compared here).
        let exact = |j: usize| match (&me.l4, f.shapes[j].as_ref().map(|e| &e.l4)) {
            (L4s::One(_), Some(L4s::One(_))) | (_, None) => true,
            (a, Some(b)) => a.overlaps_any(b),
        };
        let mut check = |j: usize, tag: u8| {
            let hit = j != i
                && tag & mine & CLASS_BITS != 0
                && exact(j)
                && (any_src
                    || tag & SRC_ANY != 0
                    || f.shapes[j].as_ref().is_some_and(|e| {
                        // The shorter list asks the other (a set's sorted list answers by search).
                        let (few, many) = if e.src.len() <= me.src.len() { (&e.src, &me.src) } else { (&me.src, &e.src) };
                        few.iter().any(|&q| many.any_overlaps(q))
                    }));
            !hit || visit(j, tag)
        };
        f.index.nodes_of(i).iter().all(|&n| f.index.overlapping(n, me.l4.hull(), budget, &mut check))
    }

    /// One walk over rule `i`'s neighbours in both families, for both questions:
    /// the earlier ones (can the rule be reached?), ascending, and whether a
    /// later one of the other action overlaps it (does it only repeat the
    /// default policy?). None if the budget ran out first.
    fn walk(&self, i: usize, budget: &mut Budget) -> Option<([Vec<usize>; 2], bool)> {
        let mut shields = false;
        let mut walked = true;
        let allow = self.rs.rules[i].action == Action::Allow;
        let earlier = [0, 1].map(|k| {
            let mut e = Vec::new();
            walked &= self.each_neighbour(&self.fams[k], i, budget, |j, tag| {
                if j < i {
                    e.push(j);
                } else if (tag & ALLOW != 0) != allow {
                    shields = true;
                }
                true
            });
            e.sort_unstable();
            e.dedup();
            e
        });
        walked.then_some((earlier, shields))
    }

    fn reach(&self, i: usize) -> Reach {
        if let Some(j) = self.dup_of[i] {
            return Reach::Shadowed(vec![j]);
        }
        if !self.rs.rules[i].fqdn.is_empty() {
            return Reach::Unknown;
        }
        // Its sets leave it no family: no packet can reach it.
        let r = &self.rs.rules[i];
        if !r.families.v4 && !r.families.v6 {
            return Reach::Shadowed(Vec::new());
        }
        match self.walk(i, &mut Budget(usize::MAX)) {
            Some((earlier, _)) => self.reach_among(i, earlier, &mut Budget(REACH_WORK)),
            None => Reach::Unknown,
        }
    }

    /// [`Linter::reach`] given the earlier rules that overlap rule `i` in each
    /// family (ascending, no repeats), within `budget`.
    fn reach_among(&self, i: usize, earlier: [Vec<usize>; 2], budget: &mut Budget) -> Reach {
        let rule = &self.rs.rules[i];
        let mut shadowing = Vec::new();
        let mut any = false;
        for (f, earlier) in self.fams.iter().zip(earlier) {
            let Some(me) = &f.shapes[i] else { continue };
            for c in CLASSES {
                if !in_class(rule, c, f.v6) {
                    continue;
                }
                let cl = class_l4(c);
                let cands: Vec<&Shape> =
                    earlier.iter().filter(|&&j| f.classes[j] & (1 << c as u8) != 0).filter_map(|&j| f.shapes[j].as_ref()).collect();
                for &mine in me.l4.iter().filter(|&&m| l4_overlaps(cl, m)) {
                    let l = (mine.0.max(cl.0), mine.1.min(cl.1));
                    for &s in me.src.iter() {
                        for &d in me.dst.iter() {
                            any = true;
                            match cover(Region { s, d, l }, &cands, budget) {
                                Cover::Covered => {}
                                Cover::Uncovered(r) => return Reach::Witness(packet(&r, f.v6, c)),
                                Cover::Unknown => return Reach::Unknown,
                            }
                        }
                    }
                }
            }
            shadowing.extend(earlier);
        }
        if !any {
            return Reach::Unknown;
        }
        shadowing.sort_unstable();
        shadowing.dedup();
        Reach::Shadowed(shadowing)
    }
}

/// The exact reachability of every rule, in file order (for the tests, which
/// hold each witness and each shadowed rule to the reference classifier).
pub fn reach(rs: &RuleSet) -> Vec<Reach> {
    let l = Linter::new(rs);
    (0..rs.rules.len()).map(|i| l.reach(i)).collect()
}

/// What makes two rules match the same packets (names, lines and actions
/// aside); prefix lists compared as sets. Borrowed: most lists are sorted
/// already (one prefix), and are only copied when not.
fn match_key(r: &Rule) -> impl std::hash::Hash + Eq + '_ {
    (prefix_set(&r.src), prefix_set(&r.dst), &r.fqdn, r.protocol.as_str(), &r.ports, r.icmp_type, r.icmp_code, r.families.v4, r.families.v6)
}

fn prefix_set(n: &Option<Vec<IpNet>>) -> Option<std::borrow::Cow<'_, [IpNet]>> {
    n.as_ref().map(|v| {
        if v.windows(2).all(|w| w[0] < w[1]) {
            std::borrow::Cow::Borrowed(v.as_slice())
        } else {
            let mut v = v.clone();
            v.sort();
            v.dedup();
            std::borrow::Cow::Owned(v)
        }
    })
}

/// For each rule, the first earlier rule with the same match. A 64-bit
/// fingerprint of each match, sorted, and the matches compared only within a
/// run of equal fingerprints (a hash map of 100k match keys cost more than the
/// rest of the index).
fn duplicates(rs: &RuleSet) -> Vec<Option<usize>> {
    use std::hash::BuildHasher as _;
    let h = foldhash::fast::FixedState::default();
    let mut fp: Vec<(u64, usize)> = rs.rules.iter().enumerate().map(|(i, r)| (h.hash_one(match_key(r)), i)).collect();
    fp.sort_unstable();
    let mut dup_of = vec![None; rs.rules.len()];
    for run in fp.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
        for (k, &(_, i)) in run.iter().enumerate() {
            let me = match_key(&rs.rules[i]);
            dup_of[i] = run[..k].iter().map(|&(_, j)| j).find(|&j| match_key(&rs.rules[j]) == me);
        }
    }
    dup_of
}

fn named(r: &Rule) -> String {
    format!("rule '{}' (line {})", r.name, r.line)
}

/// Every warning for a valid rule set. `default_line`: the line of
/// `default_policy` (for the file-wide warnings).
pub fn lint(rs: &RuleSet, default_line: usize) -> Vec<Warning> {
    let mut out = Vec::new();
    if rs.rules.is_empty() && rs.default_policy == Action::Deny {
        out.push(Warning {
            line: default_line,
            rule: None,
            kind: "empty-deny",
            message: "no rules under default_policy = \"deny\": every packet is dropped, IPv6 neighbour discovery and DHCP included".into(),
        });
    }
    out.extend(sets::set_warnings(rs));
    out.extend(dns::dns_warnings(rs));
    // Duplicates first (in order), then every other rule on all CPUs: the
    // rules are independent once the index is built.
    let l = Linter::new(rs);
    let dup_of = &l.dup_of;
    let mut unchecked = 0;
    let mut take = |(w, skipped): (Vec<Warning>, bool)| {
        unchecked += usize::from(skipped);
        w
    };
    let found: Vec<Warning> = if rs.rules.len() < PARALLEL_FROM {
        (0..rs.rules.len()).flat_map(|i| take(l.rule_warnings(i, dup_of[i]))).collect()
    } else {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = rs.rules.len().div_ceil(cpus).max(1);
        let parts: Vec<Vec<(Vec<Warning>, bool)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..rs.rules.len())
                .step_by(chunk)
                .map(|from| {
                    let l = &l;
                    scope.spawn(move || (from..(from + chunk).min(rs.rules.len())).map(|i| l.rule_warnings(i, dup_of[i])).collect())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        parts.into_iter().flatten().flat_map(&mut take).collect()
    };
    out.extend(found);
    if unchecked > 0 {
        out.push(Warning {
            line: default_line,
            rule: None,
            kind: "unchecked",
            message: format!(
                "{unchecked} rule(s) not checked for shadowing or redundancy: each shares its destination and ports with too many other rules for the linter's work bound ({} steps a rule in a file of {} rules)",
                rule_work(rs.rules.len()),
                rs.rules.len()
            ),
        });
    }
    out
}

/// The work the linter may spend on the whole file (`region::Budget`'s steps,
/// 5-50 ns each): shared out evenly between the rules, so that no file, however
/// crafted, makes `check`, `apply` or a reload lint for more than a few seconds.
const FILE_WORK: usize = 150_000_000;
/// Every rule may spend at least this much, even in a file at the rule limit
/// (the generated realistic set of 100k rules needs 5 steps for the median
/// rule, 341 at the 99.9th percentile, 1,044 at most, and gets 1,500)...
const MIN_RULE_WORK: usize = 600;
/// ... and at most this much (a small file with one very entangled rule).
const MAX_RULE_WORK: usize = 1_000_000;
/// The budget of the exact reachability check of the tests' [`reach`].
const REACH_WORK: usize = 100_000_000;

/// The work one rule's check may spend in a file of `n` rules.
fn rule_work(n: usize) -> usize {
    (FILE_WORK / n.max(1)).clamp(MIN_RULE_WORK, MAX_RULE_WORK)
}

impl Linter<'_> {
    /// The warnings about rule `i` (`dup`: the earlier rule it repeats), and
    /// whether it overlaps too many rules to be checked within its budget.
    fn rule_warnings(&self, i: usize, dup: Option<usize>) -> (Vec<Warning>, bool) {
        let (rs, r) = (self.rs, &self.rs.rules[i]);
        let w = |kind, message| Warning { line: r.line, rule: Some(r.name.clone()), kind, message };
        if let Some(j) = dup {
            return (vec![w("duplicate", format!("{} can never match: it repeats the match of {}", named(r), named(&rs.rules[j])))], false);
        }
        if let Some(w) = self.never_matches(i) {
            return (vec![w], false);
        }
        // A rule by name: what it matches is learned at run time (dns.rs says
        // what can be said about it).
        if !r.fqdn.is_empty() {
            return (Vec::new(), false);
        }
        // A rule naming a large set gets steps for each of its prefixes (a
        // share of the file's bound at most).
        let prefixes = r.src.as_ref().map_or(1, Vec::len) * r.dst.as_ref().map_or(1, Vec::len);
        let mut budget = Budget(rule_work(rs.rules.len()).max((8 * prefixes).min(FILE_WORK / 8)));
        // Too entangled for the exact check within its bounds: said once for
        // the whole file (`lint`), and the hardening advice still holds.
        let unchecked = || (self.broad_allow(i).into_iter().collect(), true);
        let Some((earlier, shields)) = self.walk(i, &mut budget) else { return unchecked() };
        let uses_sets = !r.sets.src.is_empty() || !r.sets.dst.is_empty();
        let earlier_of_sets = if uses_sets { earlier.clone() } else { Default::default() };
        let reach = self.reach_among(i, earlier, &mut budget);
        if let Reach::Unknown = reach {
            return unchecked();
        }
        if let Reach::Shadowed(by) = reach {
            // At most three names: a broad rule can overlap thousands.
            let mut names: Vec<String> = by.iter().take(3).map(|&j| named(&rs.rules[j])).collect();
            if by.len() > 3 {
                names.push(format!("{} more", by.len() - 3));
            }
            let (verb, who) = if by.len() == 1 { ("covers", names.remove(0)) } else { ("cover", format!("{} together", names.join(", "))) };
            return (vec![w("shadowed", format!("{} can never match: {who} {verb} it", named(r)))], false);
        }
        let mut out = Vec::new();
        // A later rule by name of the other action may match any address it learns.
        let other = if r.action.opposite() == Action::Allow { 0 } else { 1 };
        let shields = shields || self.last_by_name[other].is_some_and(|j| j > i);
        if r.action == rs.default_policy && !shields {
            out.push(w(
                "redundant",
                format!(
                    "{} only repeats the default policy ({}) and no later {} rule overlaps it: removing it changes nothing",
                    named(r),
                    r.action.as_str(),
                    r.action.opposite().as_str()
                ),
            ));
        }
        if uses_sets {
            out.extend(self.covered_entries(i, &earlier_of_sets, &mut budget));
        }
        out.extend(self.broad_allow(i));
        (out, false)
    }

    /// The hardening advice about an allow rule to any destination.
    fn broad_allow(&self, i: usize) -> Option<Warning> {
        let r = &self.rs.rules[i];
        let any_dst = self.fams.iter().any(|f| f.shapes[i].as_ref().is_some_and(|s| s.dst.iter().any(|d| d.len == 0)));
        (r.action == Action::Allow && any_dst).then(|| Warning {
            line: r.line,
            rule: Some(r.name.clone()),
            kind: "broad-allow",
            message: format!("{} allows traffic to any destination (0.0.0.0/0 or ::/0): name the destinations it needs", named(r)),
        })
    }
}

/// The line of `default_policy` in a rule file's text (1 if absent).
pub fn default_policy_line(text: &str) -> usize {
    text.lines().position(|l| l.trim_start().starts_with("default_policy")).map(|i| i + 1).unwrap_or(1)
}
