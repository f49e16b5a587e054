//! The one-piece parser: TOML document -> validated rules, every problem with
//! file, line, rule and field.

use std::{collections::HashSet, net::IpAddr, ops::Range};

use ipnet::IpNet;
use toml_edit::{ImDocument, Item, Key, TableLike, Value};

use super::{
    Action, Families, Problem, Protocol, Rule, RuleFileError, RuleSet, SetRefs,
    chunked::parse_chunked,
    sets::{SetTable, parse_sets},
    state::parse_state,
    toml_diag::{item_span, line_starts, suggest},
};

const TOP_KEYS: [&str; 9] = ["default_policy", "mode", "stateful", "state", "events", "geoip", "set", "dns", "rule"];
const RULE_KEYS: [&str; 10] = ["name", "action", "mode", "src", "dst", "dst_fqdn", "protocol", "ports", "icmp_type", "icmp_code"];

/// A `mode` value: Some(true) audit, Some(false) enforce, None when invalid
/// (reported in `cx`).
pub(super) fn parse_mode(cx: &mut Ctx<'_>, item: &Item, span: Option<Range<usize>>, rule: Option<&str>) -> Option<bool> {
    match item.as_str() {
        Some("enforce") => Some(false),
        Some("audit") => Some(true),
        _ => {
            cx.push(
                span,
                rule,
                Some("mode"),
                format!("must be \"enforce\" (deny drops) or \"audit\" (deny is counted, the packet passes), not {}", show(item)),
            );
            None
        }
    }
}
/// Longest rule name accepted (names are shown in tables and JSON).
pub const MAX_NAME_LEN: usize = 64;
/// Most CIDRs in one `src` or `dst` list (a cloud provider's published ranges
/// fit several times over).
pub const MAX_CIDRS_PER_LIST: usize = 65_536;
/// Most source x destination combinations in one rule (each may become a map
/// entry; the PAIR maps hold 2^21 in all).
pub const MAX_PAIRS_PER_RULE: usize = 1 << 20;

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    /// Byte offset of the start of each line of the whole file, for span -> line
    /// in O(log n).
    pub(super) line_starts: &'a [usize],
    /// Where the parsed text starts in the file (a chunk of a large file).
    pub(super) offset: usize,
    pub(super) problems: Vec<Problem>,
}

impl Ctx<'_> {
    pub(super) fn line_of(&self, span: Option<Range<usize>>) -> usize {
        let at = span.map(|r| r.start + self.offset).unwrap_or(self.offset);
        self.line_starts.partition_point(|&s| s <= at).max(1)
    }
    pub(super) fn push(&mut self, span: Option<Range<usize>>, rule: Option<&str>, field: Option<&str>, msg: String) {
        let line = self.line_of(span);
        self.problems.push(Problem {
            file: self.file.to_string(),
            line,
            rule: rule.map(str::to_string),
            field: field.map(str::to_string),
            message: msg,
        });
    }
}

/// Parses and validates a rule file. `file` is only used in messages.
///
/// A large file is parsed in chunks of 4096 rules (`chunked.rs`) on all CPUs (a TOML
/// document tree costs about 3 KB a rule; chunks keep that small and parallel).
/// Whenever anything about the chunks is not plainly right, the whole file is
/// parsed in one piece instead, so results and messages are always those of the
/// one-piece parse.
///
/// A set with a file or countries is an error here (no files are read): see
/// [`parse_with`].
pub fn parse(file: &str, text: &str) -> Result<RuleSet, RuleFileError> {
    parse_with(file, text, &crate::sets::NoFiles)
}

/// [`parse`], reading the files of `[[set]]`s and the `[geoip]` database
/// through `loader` (the parser itself does no I/O).
pub fn parse_with(file: &str, text: &str, loader: &dyn crate::sets::Loader) -> Result<RuleSet, RuleFileError> {
    parse_limited(file, text, egress_common::MAX_RULES as usize, loader)
}

/// [`parse`] with a rule-count limit of `max_rules` (tests use small ones). A
/// file with more `[[rule]]` header lines than that is refused before any TOML
/// is parsed (a document tree costs about 3 KB a rule), with the message both
/// parsers give for it.
pub(super) fn parse_limited(file: &str, text: &str, max_rules: usize, loader: &dyn crate::sets::Loader) -> Result<RuleSet, RuleFileError> {
    let starts = line_starts(text);
    let headers = rule_headers(text, &starts);
    if let Some(&first_over) = headers.get(max_rules) {
        let mut cx = Ctx { file, line_starts: &starts, offset: 0, problems: Vec::new() };
        too_many_rules(&mut cx, Some(first_over..first_over + 1), headers.len(), max_rules);
        return Err(RuleFileError { problems: cx.problems });
    }
    if let Some(rs) = parse_chunked(file, text, &starts, &headers, loader) {
        return Ok(rs);
    }
    parse_whole(file, text, &starts, max_rules, loader)
}

/// Byte offsets of the `[[rule]]` header lines.
pub(super) fn rule_headers(text: &str, starts: &[usize]) -> Vec<usize> {
    // The cheap test first: most lines do not start with the header.
    let header = |s: usize| {
        text.as_bytes()[s..].starts_with(b"[[rule]]") && text[s + 8..].split('\n').next().is_some_and(|rest| rest.trim_end().is_empty())
    };
    starts.iter().copied().filter(|&s| header(s)).collect()
}

/// The rule-count problem, at the first rule past the limit.
fn too_many_rules(cx: &mut Ctx<'_>, span: Option<Range<usize>>, count: usize, max_rules: usize) {
    cx.push(
        span,
        None,
        Some("rule"),
        format!("{count} rules, more than the {max_rules} a rule file may hold (this is rule {})", max_rules + 1),
    );
}

pub(super) fn parse_whole(
    file: &str,
    text: &str,
    starts: &[usize],
    max_rules: usize,
    loader: &dyn crate::sets::Loader,
) -> Result<RuleSet, RuleFileError> {
    let mut cx = Ctx { file, line_starts: starts, offset: 0, problems: Vec::new() };
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.message().trim().to_string();
            cx.push(e.span(), None, None, format!("not valid TOML: {msg}"));
            return Err(RuleFileError { problems: cx.problems });
        }
    };
    let root = doc.as_table();
    for (k, item) in root.iter() {
        if !TOP_KEYS.contains(&k) {
            let span = root.key(k).and_then(Key::span).or_else(|| item_span(item));
            cx.push(span, None, Some(k), suggest(k, &TOP_KEYS));
        }
    }

    let default_policy = match root.get("default_policy") {
        None => {
            cx.push(
                None,
                None,
                Some("default_policy"),
                "missing; say default_policy = \"allow\" or \"deny\" (the verdict when no rule matches)".into(),
            );
            None
        }
        Some(item) => match item.as_str() {
            Some("allow") => Some(Action::Allow),
            Some("deny") => Some(Action::Deny),
            _ => {
                cx.push(item_span(item), None, Some("default_policy"), format!("must be \"allow\" or \"deny\", not {}", show(item)));
                None
            }
        },
    };

    let state = parse_state(&mut cx, root);
    let events = super::events::parse_events(&mut cx, root);
    let sets = parse_sets(&mut cx, root, loader);
    let dns = super::fqdn::parse_dns(&mut cx, root);
    let audit = match root.get("mode") {
        None => false,
        Some(item) => parse_mode(&mut cx, item, item_span(item), None).unwrap_or(false),
    };

    // The rule tables, with the span of each.
    let mut tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = Vec::new();
    match root.get("rule") {
        None => {}
        Some(Item::ArrayOfTables(a)) => {
            for t in a.iter() {
                tables.push((t as &dyn TableLike, t.span()));
            }
        }
        Some(Item::Value(Value::Array(a))) => {
            for v in a.iter() {
                match v.as_inline_table() {
                    Some(t) => tables.push((t as &dyn TableLike, v.span())),
                    None => cx.push(v.span(), None, Some("rule"), format!("each rule must be a table, not {}", v.type_name())),
                }
            }
        }
        Some(other) => {
            cx.push(item_span(other), None, Some("rule"), "rules are written as [[rule]] tables".into());
        }
    }
    if let Some((_, span)) = tables.get(max_rules) {
        too_many_rules(&mut cx, span.clone(), tables.len(), max_rules);
        return Err(RuleFileError { problems: cx.problems });
    }

    let mut rules = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for (i, (t, span)) in tables.iter().enumerate() {
        let index = i as u32 + 1;
        if let Some(r) = parse_rule(&mut cx, *t, span.clone(), index, default_policy, audit, &mut names, &sets) {
            rules.push(r);
        }
    }
    super::fqdn::check_resolvers(&mut cx, &rules, &dns);
    if !cx.problems.is_empty() {
        // In file order (stable: problems of one line keep the order they were
        // found in); the rule file's first, then each set file's.
        cx.problems.sort_by(|a, b| (a.file != file, &a.file, a.line).cmp(&(b.file != file, &b.file, b.line)));
        return Err(RuleFileError { problems: cx.problems });
    }
    // Only reachable with a policy: a missing one is a problem above.
    let default_policy = default_policy.unwrap_or(Action::Allow);
    Ok(RuleSet { default_policy, audit, rules, state, events, sets: sets.sets, dns })
}

pub(super) fn show(item: &Item) -> String {
    match item.as_value() {
        Some(v) => format!("{} `{}`", v.type_name(), v.to_string().trim()),
        None => item.type_name().to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn parse_rule(
    cx: &mut Ctx<'_>,
    t: &dyn TableLike,
    span: Option<Range<usize>>,
    index: u32,
    default_policy: Option<Action>,
    file_audit: bool,
    names: &mut HashSet<String>,
    sets: &SetTable,
) -> Option<Rule> {
    let before = cx.problems.len();
    let line = cx.line_of(span.clone());
    let kspan = |k: &str| -> Option<Range<usize>> {
        t.get_key_value(k).and_then(|(key, item)| key.span().or_else(|| item_span(item))).or(span.clone())
    };

    // The name first, so that every other message can carry it.
    let mut name = format!("rule-{index}");
    if let Some(item) = t.get("name") {
        match item.as_str() {
            Some(n) if n.trim().is_empty() => cx.push(kspan("name"), Some(&name), Some("name"), "must not be empty".into()),
            Some(n) if n.len() > MAX_NAME_LEN => {
                cx.push(kspan("name"), Some(&name), Some("name"), format!("longer than {MAX_NAME_LEN} bytes"))
            }
            Some(n) if n.chars().any(|c| c.is_control()) => {
                cx.push(kspan("name"), Some(&name), Some("name"), "must not contain control characters".into())
            }
            Some(n) => name = n.to_string(),
            None => cx.push(kspan("name"), Some(&name), Some("name"), format!("must be a string, not {}", show(item))),
        }
    }
    let rn = Some(name.as_str());
    if !names.insert(name.clone()) {
        cx.push(kspan("name"), rn, Some("name"), format!("the name '{name}' is used by an earlier rule; names must be unique"));
    }

    for (k, _) in t.iter() {
        if !RULE_KEYS.contains(&k) {
            cx.push(kspan(k), rn, Some(k), suggest(k, &RULE_KEYS));
        }
    }

    let action = match t.get("action") {
        None => default_policy.map(Action::opposite),
        Some(item) => match item.as_str() {
            Some("allow") => Some(Action::Allow),
            Some("deny") => Some(Action::Deny),
            _ => {
                cx.push(kspan("action"), rn, Some("action"), format!("must be \"allow\" or \"deny\", not {}", show(item)));
                None
            }
        },
    };

    // mode: the rule's own, else the file's; it only changes what a deny does.
    let own_mode = t.get("mode").map(|item| parse_mode(cx, item, kspan("mode"), rn));
    if let (Some(Some(true)), Some(Action::Allow)) = (own_mode, action) {
        cx.push(kspan("mode"), rn, Some("mode"), "\"audit\" applies to deny rules (an allow rule lets the packet pass either way)".into());
    }
    let audit = action == Some(Action::Deny) && own_mode.flatten().unwrap_or(file_audit);

    let mut refs = SetRefs::default();
    let src = parse_nets(cx, t.get("src"), kspan("src"), rn, "src", sets, &mut refs.src, &mut refs.src_own);
    let dst = parse_nets(cx, t.get("dst"), kspan("dst"), rn, "dst", sets, &mut refs.dst, &mut refs.dst_own);
    let fqdn = match t.get("dst_fqdn") {
        None => Some(Vec::new()),
        Some(item) => {
            if t.get("dst").is_some() {
                cx.push(
                    kspan("dst_fqdn"),
                    rn,
                    Some("dst_fqdn"),
                    "a rule names its destination either by address (dst) or by name (dst_fqdn), not both: split it in two".into(),
                );
            }
            super::fqdn::parse_fqdn(cx, item, kspan("dst_fqdn"), rn)
        }
    };
    // Each (source, destination) pair of a rule can become a map entry.
    if let (Some(Some(s)), Some(Some(d))) = (&src, &dst)
        && s.len() * d.len() > MAX_PAIRS_PER_RULE
    {
        cx.push(
            kspan("dst"),
            rn,
            Some("dst"),
            format!(
                "{} sources x {} destinations = {} pairs, more than the {MAX_PAIRS_PER_RULE} one rule may hold; split the rule",
                s.len(),
                d.len(),
                s.len() * d.len()
            ),
        );
    }

    let protocol = match t.get("protocol") {
        None => Some(Protocol::All),
        Some(item) => match item.as_str() {
            Some("all") => Some(Protocol::All),
            Some("tcp") => Some(Protocol::Tcp),
            Some("udp") => Some(Protocol::Udp),
            Some("icmp") => Some(Protocol::Icmp),
            Some("icmpv6") => Some(Protocol::Icmpv6),
            _ => {
                cx.push(
                    kspan("protocol"),
                    rn,
                    Some("protocol"),
                    format!("must be one of \"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"all\", not {}", show(item)),
                );
                None
            }
        },
    };

    let ports = t.get("ports").and_then(|item| {
        let r = parse_ports(item);
        if let Err(m) = &r {
            cx.push(kspan("ports"), rn, Some("ports"), m.clone());
        }
        r.ok()
    });
    if ports.is_some() && !matches!(protocol, Some(Protocol::Tcp | Protocol::Udp)) {
        let p = protocol.map(Protocol::as_str).unwrap_or("?");
        cx.push(kspan("ports"), rn, Some("ports"), format!("ports need protocol \"tcp\" or \"udp\" (this rule's protocol is \"{p}\")"));
    }
    let byte = |cx: &mut Ctx<'_>, k: &str| -> Option<u8> {
        let item = t.get(k)?;
        match item.as_integer() {
            Some(v) if (0..=255).contains(&v) => Some(v as u8),
            _ => {
                cx.push(kspan(k), rn, Some(k), format!("must be an integer from 0 to 255, not {}", show(item)));
                None
            }
        }
    };
    let icmp_type = byte(cx, "icmp_type");
    let icmp_code = byte(cx, "icmp_code");
    if t.get("icmp_type").is_some() && !matches!(protocol, Some(Protocol::Icmp | Protocol::Icmpv6)) {
        let p = protocol.map(Protocol::as_str).unwrap_or("?");
        cx.push(
            kspan("icmp_type"),
            rn,
            Some("icmp_type"),
            format!("icmp_type needs protocol \"icmp\" or \"icmpv6\" (this rule's protocol is \"{p}\")"),
        );
    }
    if t.get("icmp_code").is_some() && t.get("icmp_type").is_none() {
        cx.push(kspan("icmp_code"), rn, Some("icmp_code"), "icmp_code needs icmp_type".into());
    }

    // Address families: what src, dst and protocol allow together. The checks
    // below judge what the rule itself writes: a field naming a set counts as
    // both families there (a set may hold both, and what it holds changes with
    // its file). The rule's families are what its entries, sets included,
    // allow; a rule its sets leave no family matches nothing (lint says so).
    let mut families = Families::BOTH;
    if let (Some(src), Some(dst), Some(protocol)) = (&src, &dst, protocol) {
        let of = |nets: &Option<Vec<IpNet>>, own: usize, sets: &[String]| match nets {
            None => Families::BOTH,
            Some(_) if !sets.is_empty() => Families::BOTH,
            Some(v) => Families::of_nets(&v[..own.min(v.len())]),
        };
        let fam_src = of(src, refs.src_own, &refs.src);
        let fam_dst = of(dst, refs.dst_own, &refs.dst);
        let fam_proto = match protocol {
            Protocol::Icmp => Families { v4: true, v6: false },
            Protocol::Icmpv6 => Families { v4: false, v6: true },
            _ => Families::BOTH,
        };
        let written = fam_src.and(fam_dst).and(fam_proto);
        if !written.v4 && !written.v6 {
            let (field, why) = if !fam_src.and(fam_dst).v4 && !fam_src.and(fam_dst).v6 {
                ("dst", format!("src is {} but dst is {}", fam_src.describe(), fam_dst.describe()))
            } else {
                (
                    "protocol",
                    format!("protocol \"{}\" never matches the rule's addresses ({})", protocol.as_str(), fam_src.and(fam_dst).describe()),
                )
            };
            cx.push(kspan(field), rn, Some(field), format!("the rule can never match: {why}"));
        } else {
            // A listed prefix of a family the rest of the rule excludes can never match.
            for (field, nets, own) in [("src", src, refs.src_own), ("dst", dst, refs.dst_own)] {
                for n in nets.iter().flatten().take(own) {
                    if !written.has(n) {
                        cx.push(
                            kspan(field),
                            rn,
                            Some(field),
                            format!("{n} can never match: the rest of the rule matches {}", written.describe()),
                        );
                    }
                }
            }
        }
        let all = |nets: &Option<Vec<IpNet>>| nets.as_deref().map(Families::of_nets).unwrap_or(Families::BOTH);
        families = all(src).and(all(dst)).and(fam_proto);
    }

    if cx.problems.len() != before {
        return None;
    }
    let fqdn = fqdn?;
    Some(Rule {
        index,
        name,
        line,
        action: action?,
        src: src?,
        // A rule by name matches no address as such (only learned ones).
        dst: if fqdn.is_empty() { dst? } else { Some(Vec::new()) },
        fqdn,
        protocol: protocol?,
        ports,
        icmp_type,
        icmp_code,
        families,
        audit,
        sets: refs,
    })
}

/// `src`/`dst`: a CIDR, a set (`@name`), or a list of them. Outer `None`:
/// invalid (reported); inner `None`: key absent (any address). The rule's own
/// CIDRs come first (`own` of them), then the entries of the sets it names
/// (`names`), merged, without those equal to one of its own.
#[allow(clippy::too_many_arguments)]
fn parse_nets(
    cx: &mut Ctx<'_>,
    item: Option<&Item>,
    span: Option<Range<usize>>,
    rule: Option<&str>,
    field: &str,
    sets: &SetTable,
    names: &mut Vec<String>,
    own: &mut usize,
) -> Option<Option<Vec<IpNet>>> {
    let Some(item) = item else { return Some(None) };
    let mut out = Vec::new();
    let mut used: Vec<usize> = Vec::new();
    let mut ok = true;
    let mut one = |cx: &mut Ctx<'_>, v: &Value| -> bool {
        match v.as_str() {
            Some(s) if s.trim_start().starts_with('@') => {
                let name = s.trim().trim_start_matches('@');
                match sets.names.get(name) {
                    Some(Some(i)) => {
                        if !used.contains(i) {
                            used.push(*i);
                            names.push(name.to_string());
                        }
                        true
                    }
                    // Defined, but it did not load: said at the set.
                    Some(None) => false,
                    None => {
                        cx.push(v.span().or(span.clone()), rule, Some(field), sets.undefined(name));
                        false
                    }
                }
            }
            Some(s) => match parse_cidr(s) {
                Ok(n) => {
                    out.push(n);
                    true
                }
                Err(m) => {
                    cx.push(v.span().or(span.clone()), rule, Some(field), m);
                    false
                }
            },
            None => {
                cx.push(
                    v.span().or(span.clone()),
                    rule,
                    Some(field),
                    format!("each entry must be a CIDR string such as \"192.0.2.0/24\" or a set \"@name\", not {}", v.type_name()),
                );
                false
            }
        }
    };
    match item.as_value() {
        Some(Value::Array(a)) if a.len() > MAX_CIDRS_PER_LIST => {
            cx.push(
                span.clone(),
                rule,
                Some(field),
                format!("{} CIDRs, more than the {MAX_CIDRS_PER_LIST} one list may hold; split the rule, or put them in a set", a.len()),
            );
            ok = false;
        }
        Some(Value::Array(a)) => {
            if a.is_empty() {
                cx.push(span.clone(), rule, Some(field), format!("an empty list matches nothing; omit '{field}' to match any address"));
                ok = false;
            }
            for v in a.iter() {
                ok &= one(cx, v);
            }
        }
        Some(v) => ok &= one(cx, v),
        None => {
            cx.push(span.clone(), rule, Some(field), "must be a CIDR string, a set \"@name\", or a list of them".into());
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    *own = out.len();
    match used.as_slice() {
        [] => {}
        [i] if out.is_empty() => out.extend_from_slice(&sets.sets[*i].entries),
        _ => {
            let mine: std::collections::HashSet<IpNet> = out.iter().copied().collect();
            let all: Vec<(IpNet, u32)> = used.iter().flat_map(|&i| sets.sets[i].entries.iter().map(|&n| (n, 0))).collect();
            out.extend(crate::sets::merge(all).0.into_iter().filter(|n| !mine.contains(n)));
        }
    }
    Some(Some(out))
}

/// A CIDR, or a bare address meaning a host prefix. Host bits set is an error.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if !s.contains('/') {
        return match s.parse::<IpAddr>() {
            Ok(a) => Ok(IpNet::from(a)),
            Err(_) => Err(format!("'{s}' is not an IPv4 or IPv6 address or CIDR")),
        };
    }
    let net: IpNet = s.parse().map_err(|_| format!("'{s}' is not a valid CIDR (expected e.g. 192.0.2.0/24 or 2001:db8::/32)"))?;
    if net.addr() != net.network() {
        return Err(format!("'{s}' has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// `ports`: a port `N` (integer or string), a range `"N-M"`, a comma string
/// `"80,443,8000-8100"`, or a list of numbers and such strings. Returns the
/// intervals sorted and merged (overlapping or adjacent entries become one).
/// An entry that is out of range, empty or reversed is an error naming its
/// position in the list.
pub fn parse_ports(item: &Item) -> Result<Vec<(u16, u16)>, String> {
    const WHAT: &str = "a port (80), a range (\"8000-8100\"), a comma list (\"80,443\") or a list ([80, 443, \"8000-8100\"])";
    // Entries as (text, position in the list when there is one).
    let mut entries: Vec<(String, Option<usize>)> = Vec::new();
    let mut one = |v: &Value, pos: Option<usize>| -> Result<(), String> {
        if let Some(n) = v.as_integer() {
            if u16::try_from(n).is_err() {
                let at = pos.map(|p| format!("entry {p}: ")).unwrap_or_default();
                return Err(format!("{at}{n} is not a port number from 0 to 65535"));
            }
            entries.push((n.to_string(), pos));
            return Ok(());
        }
        let Some(s) = v.as_str() else {
            let at = pos.map(|p| format!("entry {p} ")).unwrap_or_default();
            return Err(format!("{at}must be {WHAT}, not {} `{}`", v.type_name(), v.to_string().trim()));
        };
        entries.extend(s.split(',').map(|t| (t.to_string(), pos)));
        Ok(())
    };
    match item.as_value() {
        Some(Value::Array(a)) => {
            if a.is_empty() {
                return Err("an empty list matches no port; omit 'ports' to match every port".into());
            }
            for (k, v) in a.iter().enumerate() {
                one(v, Some(k + 1))?;
            }
        }
        Some(v) => one(v, None)?,
        None => return Err(format!("must be {WHAT}, not {}", show(item))),
    }
    // A comma string's pieces are numbered on their own when the string is the
    // whole value; inside a list, the list position names them.
    let numbered = entries.len() > 1;
    let mut out = Vec::with_capacity(entries.len());
    for (k, (text, pos)) in entries.iter().enumerate() {
        let at = match pos {
            Some(p) => format!("entry {p}: "),
            None if numbered => format!("entry {}: ", k + 1),
            None => String::new(),
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("{at}empty entry (two commas in a row, or a comma at an end)"));
        }
        let port = |s: &str| -> Result<u16, String> {
            s.trim().parse::<u16>().map_err(|_| format!("{at}'{}' is not a port number from 0 to 65535", s.trim()))
        };
        let (a, b) = match t.split_once('-') {
            Some((a, b)) if a.trim().is_empty() || b.trim().is_empty() => {
                return Err(format!("{at}'{t}' is not a port number from 0 to 65535 or a range N-M"));
            }
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(t)?;
                (p, p)
            }
        };
        if a > b {
            return Err(format!("{at}range '{t}' is empty: the first port is greater than the last"));
        }
        out.push((a, b));
    }
    Ok(merge_intervals(out))
}

/// Sorts intervals and merges the ones that overlap or touch.
pub fn merge_intervals(mut v: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}
