//! The rule file: TOML text -> validated [`RuleSet`]. Pure: no syscalls, no I/O
//! besides what the caller hands in. Every problem is reported with the file, the
//! line, the rule and the field, and all problems are reported at once.

use std::{collections::HashSet, fmt, net::IpAddr, ops::Range};

use ipnet::IpNet;
use toml_edit::{ImDocument, Item, Key, TableLike, Value};

/// What a rule does with a packet it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
    pub fn opposite(self) -> Action {
        match self {
            Action::Allow => Action::Deny,
            Action::Deny => Action::Allow,
        }
    }
    pub fn code(self) -> u32 {
        match self {
            Action::Allow => egress_common::ACTION_ALLOW,
            Action::Deny => egress_common::ACTION_DENY,
        }
    }
}

/// The `protocol` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    /// ICMP over IPv4 only.
    Icmp,
    /// ICMPv6 over IPv6 only.
    Icmpv6,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::All => "all",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }
}

/// The address families a rule can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub const BOTH: Families = Families { v4: true, v6: true };
    fn of_nets(nets: &[IpNet]) -> Families {
        Families { v4: nets.iter().any(|n| matches!(n, IpNet::V4(_))), v6: nets.iter().any(|n| matches!(n, IpNet::V6(_))) }
    }
    fn and(self, o: Families) -> Families {
        Families { v4: self.v4 && o.v4, v6: self.v6 && o.v6 }
    }
    pub fn has(self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(_) => self.v4,
            IpNet::V6(_) => self.v6,
        }
    }
    fn describe(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, true) => "IPv4 and IPv6",
            (true, false) => "IPv4 only",
            (false, true) => "IPv6 only",
            (false, false) => "no address family",
        }
    }
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position in the file; also the rule's counter slot.
    pub index: u32,
    pub name: String,
    /// Line of the rule's `[[rule]]` header.
    pub line: usize,
    pub action: Action,
    /// `None`: any source address.
    pub src: Option<Vec<IpNet>>,
    /// `None`: any destination address.
    pub dst: Option<Vec<IpNet>>,
    pub protocol: Protocol,
    /// Inclusive destination port range (tcp/udp only).
    pub ports: Option<(u16, u16)>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// The families this rule can match (never empty after validation).
    pub families: Families,
}

impl Rule {
    /// The 16-bit interval of the last lookup stage this rule covers: destination
    /// ports for tcp/udp, `type << 8 | code` for ICMP, everything otherwise.
    pub fn l4_range(&self) -> (u16, u16) {
        if let Some(p) = self.ports {
            return p;
        }
        match (self.icmp_type, self.icmp_code) {
            (Some(t), Some(c)) => {
                let v = (t as u16) << 8 | c as u16;
                (v, v)
            }
            (Some(t), None) => ((t as u16) << 8, (t as u16) << 8 | 0xff),
            _ => (0, u16::MAX),
        }
    }

    /// True when the rule constrains no L4 field, so it can match a packet whose
    /// L4 header is absent (non-first fragment).
    pub fn l4_any(&self) -> bool {
        self.ports.is_none() && self.icmp_type.is_none()
    }

    /// A one-line match summary, like the middle columns of `iptables -L`.
    pub fn summary(&self) -> String {
        let nets = |n: &Option<Vec<IpNet>>| match n {
            None => "any".to_string(),
            Some(v) => v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        };
        let mut s = format!("{} {} -> {}", self.protocol.as_str(), nets(&self.src), nets(&self.dst));
        if let Some((a, b)) = self.ports {
            if a == b {
                s.push_str(&format!(" dport {a}"));
            } else {
                s.push_str(&format!(" dport {a}-{b}"));
            }
        }
        if let Some(t) = self.icmp_type {
            s.push_str(&format!(" type {t}"));
            if let Some(c) = self.icmp_code {
                s.push_str(&format!(" code {c}"));
            }
        }
        s
    }
}

/// A whole validated rule file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub default_policy: Action,
    pub rules: Vec<Rule>,
}

/// One problem in a rule file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    /// Name of the rule (or `rule-N` when it has none yet), if the problem is inside one.
    pub rule: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        match (&self.rule, &self.field) {
            (Some(r), Some(fl)) => write!(f, "rule '{r}', field '{fl}': ")?,
            (Some(r), None) => write!(f, "rule '{r}': ")?,
            (None, Some(fl)) => write!(f, "field '{fl}': ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// All problems found in a rule file (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct RuleFileError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for RuleFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let file = self.problems.first().map(|p| p.file.as_str()).unwrap_or("rule file");
        write!(f, "{file}: {n} problem{} found, nothing was changed", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

const TOP_KEYS: [&str; 2] = ["default_policy", "rule"];
const RULE_KEYS: [&str; 8] = ["name", "action", "src", "dst", "protocol", "ports", "icmp_type", "icmp_code"];
/// Longest rule name accepted (names are shown in tables and JSON).
pub const MAX_NAME_LEN: usize = 64;

struct Ctx<'a> {
    file: &'a str,
    /// Byte offset of the start of each line of the whole file, for span -> line
    /// in O(log n).
    line_starts: &'a [usize],
    /// Where the parsed text starts in the file (a chunk of a large file).
    offset: usize,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn line_of(&self, span: Option<Range<usize>>) -> usize {
        let at = span.map(|r| r.start + self.offset).unwrap_or(self.offset);
        self.line_starts.partition_point(|&s| s <= at).max(1)
    }
    fn push(&mut self, span: Option<Range<usize>>, rule: Option<&str>, field: Option<&str>, msg: String) {
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

fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

/// Did-you-mean for an unknown key.
pub(crate) fn suggest(key: &str, known: &[&str]) -> String {
    let best = known.iter().map(|k| (strsim_distance(key, k), *k)).min().filter(|(d, _)| *d <= 2);
    match best {
        Some((_, k)) => format!("unknown key '{key}' (did you mean '{k}'?)"),
        None => format!("unknown key '{key}' (known keys: {})", known.join(", ")),
    }
}

/// Levenshtein distance; keys are short.
fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = if ca == *cb { 0 } else { 1 };
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(crate) fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0).chain(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1)).collect()
}

/// Rules per chunk when a large file is parsed in pieces.
const CHUNK_RULES: usize = 4096;

/// Parses and validates a rule file. `file` is only used in messages.
///
/// A large file is parsed in chunks of [`CHUNK_RULES`] rules on all CPUs (a TOML
/// document tree costs about 3 KB a rule; chunks keep that small and parallel).
/// Whenever anything about the chunks is not plainly right, the whole file is
/// parsed in one piece instead, so results and messages are always those of the
/// one-piece parse.
pub fn parse(file: &str, text: &str) -> Result<RuleSet, RuleFileError> {
    let starts = line_starts(text);
    if let Some(rs) = parse_chunked(file, text, &starts) {
        return Ok(rs);
    }
    parse_whole(file, text, &starts)
}

/// A parsed chunk: its first rule's position, its rules, the names they use.
type Chunk = (usize, Vec<Rule>, HashSet<String>);

/// The chunked parse of a valid large file; `None`: use the one-piece parse.
fn parse_chunked(file: &str, text: &str, starts: &[usize]) -> Option<RuleSet> {
    // Multi-line strings could hide a header line; such files take the safe path.
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let headers: Vec<usize> =
        starts.iter().copied().filter(|&s| text[s..].split('\n').next().map(str::trim_end) == Some("[[rule]]")).collect();
    if headers.len() < 2 * CHUNK_RULES {
        return None;
    }
    // The preamble: default_policy, nothing else.
    let pre = ImDocument::parse(&text[..headers[0]]).ok()?;
    if pre.as_table().iter().any(|(k, _)| k != "default_policy") {
        return None;
    }
    let default_policy = match pre.get("default_policy")?.as_str()? {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        _ => return None,
    };
    // (first rule index, byte range) of each chunk.
    let mut chunks: Vec<(usize, Range<usize>)> = Vec::new();
    for (k, group) in headers.chunks(CHUNK_RULES).enumerate() {
        let end = headers.get((k + 1) * CHUNK_RULES).copied().unwrap_or(text.len());
        chunks.push((k * CHUNK_RULES, group[0]..end));
    }
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(chunks.len());
    let per_worker: Vec<Option<Vec<Chunk>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let mine: Vec<(usize, Range<usize>)> = chunks.iter().skip(w).step_by(workers).cloned().collect();
                sc.spawn(move || -> Option<Vec<Chunk>> {
                    mine.into_iter().map(|(first, range)| parse_chunk(file, text, starts, first, range, default_policy)).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    let mut parts: Vec<Chunk> = per_worker.into_iter().collect::<Option<Vec<_>>>()?.into_iter().flatten().collect();
    parts.sort_by_key(|p| p.0);
    let mut names: HashSet<String> = HashSet::new();
    let mut rules = Vec::with_capacity(headers.len());
    for (_, part, part_names) in parts {
        for n in part_names {
            // A name used in two chunks: the one-piece parse reports it properly.
            if !names.insert(n) {
                return None;
            }
        }
        rules.extend(part);
    }
    (rules.len() == headers.len()).then_some(RuleSet { default_policy, rules })
}

/// One chunk: exactly its `[[rule]]` tables, every one valid.
fn parse_chunk(file: &str, text: &str, starts: &[usize], first: usize, range: Range<usize>, default_policy: Action) -> Option<Chunk> {
    let doc = ImDocument::parse(&text[range.clone()]).ok()?;
    let root = doc.as_table();
    if root.len() != 1 {
        return None;
    }
    let Some(Item::ArrayOfTables(a)) = root.get("rule") else { return None };
    let mut cx = Ctx { file, line_starts: starts, offset: range.start, problems: Vec::new() };
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(a.len());
    for (i, t) in a.iter().enumerate() {
        let index = (first + i) as u32 + 1;
        rules.push(parse_rule(&mut cx, t, t.span(), index, Some(default_policy), &mut names)?);
    }
    cx.problems.is_empty().then_some((first, rules, names))
}

fn parse_whole(file: &str, text: &str, starts: &[usize]) -> Result<RuleSet, RuleFileError> {
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
    if tables.len() > egress_common::MAX_RULES as usize {
        cx.push(
            None,
            None,
            Some("rule"),
            format!("{} rules, more than the {} a rule file may hold", tables.len(), egress_common::MAX_RULES),
        );
    }

    let mut rules = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for (i, (t, span)) in tables.iter().enumerate() {
        let index = i as u32 + 1;
        if let Some(r) = parse_rule(&mut cx, *t, span.clone(), index, default_policy, &mut names) {
            rules.push(r);
        }
    }
    if !cx.problems.is_empty() {
        // In file order (stable: problems of one line keep the order they were found in).
        cx.problems.sort_by_key(|p| p.line);
        return Err(RuleFileError { problems: cx.problems });
    }
    // Only reachable with a policy: a missing one is a problem above.
    let default_policy = default_policy.unwrap_or(Action::Allow);
    Ok(RuleSet { default_policy, rules })
}

fn show(item: &Item) -> String {
    match item.as_value() {
        Some(v) => format!("{} `{}`", v.type_name(), v.to_string().trim()),
        None => item.type_name().to_string(),
    }
}

fn parse_rule(
    cx: &mut Ctx<'_>,
    t: &dyn TableLike,
    span: Option<Range<usize>>,
    index: u32,
    default_policy: Option<Action>,
    names: &mut HashSet<String>,
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

    let src = parse_nets(cx, t.get("src"), kspan("src"), rn, "src");
    let dst = parse_nets(cx, t.get("dst"), kspan("dst"), rn, "dst");

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

    // Address families: what src, dst and protocol allow together.
    let mut families = Families::BOTH;
    if let (Some(src), Some(dst), Some(protocol)) = (&src, &dst, protocol) {
        let fam_src = src.as_deref().map(Families::of_nets).unwrap_or(Families::BOTH);
        let fam_dst = dst.as_deref().map(Families::of_nets).unwrap_or(Families::BOTH);
        let fam_proto = match protocol {
            Protocol::Icmp => Families { v4: true, v6: false },
            Protocol::Icmpv6 => Families { v4: false, v6: true },
            _ => Families::BOTH,
        };
        families = fam_src.and(fam_dst).and(fam_proto);
        if !families.v4 && !families.v6 {
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
            for (field, nets) in [("src", src), ("dst", dst)] {
                for n in nets.iter().flatten() {
                    if !families.has(n) {
                        cx.push(
                            kspan(field),
                            rn,
                            Some(field),
                            format!("{n} can never match: the rest of the rule matches {}", families.describe()),
                        );
                    }
                }
            }
        }
    }

    if cx.problems.len() != before {
        return None;
    }
    Some(Rule { index, name, line, action: action?, src: src?, dst: dst?, protocol: protocol?, ports, icmp_type, icmp_code, families })
}

/// `src`/`dst`: a CIDR or a list of CIDRs. Outer `None`: invalid (reported);
/// inner `None`: key absent (any address).
fn parse_nets(
    cx: &mut Ctx<'_>,
    item: Option<&Item>,
    span: Option<Range<usize>>,
    rule: Option<&str>,
    field: &str,
) -> Option<Option<Vec<IpNet>>> {
    let Some(item) = item else { return Some(None) };
    let mut out = Vec::new();
    let mut ok = true;
    let mut one = |cx: &mut Ctx<'_>, v: &Value| -> bool {
        match v.as_str() {
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
                    format!("each entry must be a CIDR string such as \"192.0.2.0/24\", not {}", v.type_name()),
                );
                false
            }
        }
    };
    match item.as_value() {
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
            cx.push(span.clone(), rule, Some(field), "must be a CIDR string or a list of them".into());
            ok = false;
        }
    }
    if ok { Some(Some(out)) } else { None }
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

/// `ports`: "N", "N-M" (or a bare integer N).
pub fn parse_ports(item: &Item) -> Result<(u16, u16), String> {
    let port = |s: &str| -> Result<u16, String> {
        s.trim().parse::<u16>().map_err(|_| format!("'{}' is not a port number from 0 to 65535", s.trim()))
    };
    if let Some(n) = item.as_integer() {
        return u16::try_from(n).map(|p| (p, p)).map_err(|_| format!("{n} is not a port number from 0 to 65535"));
    }
    let Some(s) = item.as_str() else {
        return Err(format!("must be a port \"N\" or a range \"N-M\", not {}", show(item)));
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if a > b {
        return Err(format!("range '{s}' is empty: the first port is greater than the last"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Vec<String> {
        match parse("r.toml", text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn full_rule_parses() {
        let rs = parse(
            "r.toml",
            r#"default_policy = "allow"
[[rule]]
name = "no-smtp"
action = "deny"
src = "10.1.1.0/24"
dst = ["0.0.0.0/0", "192.0.2.0/24"]
protocol = "tcp"
ports = "25"
[[rule]]
protocol = "icmp"
icmp_type = 8
icmp_code = 0
[[rule]]
dst = "2001:db8::/32"
protocol = "udp"
ports = "1000-2000"
"#,
        )
        .unwrap();
        assert_eq!(rs.default_policy, Action::Allow);
        assert_eq!(rs.rules.len(), 3);
        let r = &rs.rules[0];
        assert_eq!((r.name.as_str(), r.action, r.ports, r.line), ("no-smtp", Action::Deny, Some((25, 25)), 2));
        assert_eq!(r.families, Families { v4: true, v6: false });
        let r = &rs.rules[1];
        assert_eq!((r.name.as_str(), r.action, r.icmp_type, r.icmp_code), ("rule-2", Action::Deny, Some(8), Some(0)));
        assert_eq!(r.families, Families { v4: true, v6: false });
        assert_eq!(r.l4_range(), (0x0800, 0x0800));
        let r = &rs.rules[2];
        assert_eq!(r.families, Families { v4: false, v6: true });
        assert_eq!(r.ports, Some((1000, 2000)));
    }

    #[test]
    fn omitted_action_is_opposite_of_default() {
        let rs = parse("r.toml", "default_policy = \"deny\"\n[[rule]]\ndst = \"192.0.2.1\"\n").unwrap();
        assert_eq!(rs.rules[0].action, Action::Allow);
        assert_eq!(rs.rules[0].dst, Some(vec!["192.0.2.1/32".parse().unwrap()]));
    }

    #[test]
    fn empty_rule_list_is_fine() {
        let rs = parse("r.toml", "default_policy = \"deny\"\n").unwrap();
        assert!(rs.rules.is_empty());
    }

    #[test]
    fn messages_name_file_line_rule_field() {
        let e = err("default_policy = \"allow\"\n[[rule]]\nname = \"web\"\nprotocol = \"tcp\"\nports = \"80-20\"\n");
        assert_eq!(e, vec!["r.toml:5: rule 'web', field 'ports': range '80-20' is empty: the first port is greater than the last"]);
    }

    #[test]
    fn host_bits_are_an_error_with_suggestion() {
        let e = err("default_policy = \"allow\"\n[[rule]]\ndst = \"192.0.2.7/24\"\n");
        assert_eq!(e, vec!["r.toml:3: rule 'rule-1', field 'dst': '192.0.2.7/24' has host bits set; did you mean 192.0.2.0/24?"]);
    }

    #[test]
    fn unknown_keys_are_errors_with_suggestion() {
        let e = err("default_policy = \"allow\"\nverbose = true\n[[rule]]\nprotcol = \"tcp\"\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], "r.toml:2: field 'verbose': unknown key 'verbose' (known keys: default_policy, rule)");
        assert_eq!(e[1], "r.toml:4: rule 'rule-1', field 'protcol': unknown key 'protcol' (did you mean 'protocol'?)");
    }

    #[test]
    fn every_problem_is_reported() {
        let e = err(
            "default_policy = \"maybe\"\n[[rule]]\nname = \"a\"\nprotocol = \"sctp\"\n[[rule]]\nname = \"a\"\nsrc = \"300.1.1.1/8\"\n[[rule]]\nprotocol = \"udp\"\nicmp_type = 3\n",
        );
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(e[0].starts_with("r.toml:1: field 'default_policy': must be \"allow\" or \"deny\""));
        assert!(e[1].starts_with("r.toml:4: rule 'a', field 'protocol': must be one of"));
        assert!(e[2].starts_with("r.toml:6: rule 'a', field 'name': the name 'a' is used by an earlier rule"));
        assert!(e[3].starts_with("r.toml:7: rule 'a', field 'src': '300.1.1.1/8' is not a valid CIDR"));
        assert!(e[4].starts_with("r.toml:10: rule 'rule-3', field 'icmp_type': icmp_type needs protocol"));
    }

    #[test]
    fn family_mismatch_is_an_error() {
        let e = err("default_policy = \"allow\"\n[[rule]]\nsrc = \"192.0.2.0/24\"\ndst = \"2001:db8::/32\"\n");
        assert_eq!(e, vec!["r.toml:4: rule 'rule-1', field 'dst': the rule can never match: src is IPv4 only but dst is IPv6 only"]);
        let e = err("default_policy = \"allow\"\n[[rule]]\nprotocol = \"icmpv6\"\ndst = \"192.0.2.0/24\"\n");
        assert_eq!(
            e,
            vec![
                "r.toml:3: rule 'rule-1', field 'protocol': the rule can never match: protocol \"icmpv6\" never matches the rule's addresses (IPv4 only)"
            ]
        );
        let e = err("default_policy = \"allow\"\n[[rule]]\nsrc = [\"192.0.2.0/24\", \"2001:db8::/32\"]\ndst = \"198.51.100.0/24\"\n");
        assert_eq!(e, vec!["r.toml:3: rule 'rule-1', field 'src': 2001:db8::/32 can never match: the rest of the rule matches IPv4 only"]);
    }

    #[test]
    fn misc_errors() {
        assert!(err("[[rule]]\n")[0].contains("field 'default_policy': missing"));
        assert!(err("default_policy = \"allow\"\n[[rule]]\ndst = []\n")[0].contains("empty list matches nothing"));
        assert!(err("default_policy = \"allow\"\n[[rule]]\nprotocol = \"tcp\"\nports = \"70000\"\n")[0].contains("not a port number"));
        assert!(err("default_policy = \"allow\"\n[[rule]]\nprotocol = \"icmp\"\nicmp_code = 1\n")[0].contains("icmp_code needs icmp_type"));
        assert!(err("default_policy = \"allow\"\n[[rule]]\nprotocol = \"icmp\"\nicmp_type = 256\n")[0].contains("0 to 255"));
        assert!(err("default_policy = \"allow\"\n[[rule]]\nname = \"\"\n")[0].contains("must not be empty"));
        assert!(err("default_policy = \"allow\"\nrule = 3\n")[0].contains("[[rule]]"));
        let e = err("default_policy = \"allow\"\n[[rule]\n");
        assert!(e[0].starts_with("r.toml:2: not valid TOML"), "{e:?}");
    }

    #[test]
    fn ports_accept_integer_and_range() {
        let rs = parse(
            "r.toml",
            "default_policy = \"deny\"\n[[rule]]\nprotocol = \"udp\"\nports = 53\n[[rule]]\nprotocol = \"tcp\"\nports = \"0-65535\"\n",
        )
        .unwrap();
        assert_eq!(rs.rules[0].ports, Some((53, 53)));
        assert_eq!(rs.rules[1].ports, Some((0, 65535)));
    }

    #[test]
    fn chunked_parse_equals_the_one_piece_parse() {
        let text = crate::ruleset_gen::realistic(3 * CHUNK_RULES + 17, 100, 3);
        let starts = line_starts(&text);
        let chunked = parse_chunked("big.toml", &text, &starts).expect("a plain generated file takes the chunked path");
        assert_eq!(chunked, parse_whole("big.toml", &text, &starts).unwrap());
        // A problem in a late chunk: the one-piece parse reports it, with its line.
        let bad = text.replacen("protocol = \"udp\"\nports = \"10099\"", "protocol = \"udp\"\nports = \"99999\"", 1);
        assert_ne!(bad, text);
        let Err(e) = parse("big.toml", &bad) else { panic!("port 99999 must be refused") };
        let line = bad[..bad.find("\"99999\"").unwrap()].lines().count();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].line, line);
        // A name used in two chunks.
        let dup = text.replacen("name = \"r5\"\n", "name = \"r12000\"\n", 1);
        let Err(e) = parse("big.toml", &dup) else { panic!("a name used twice, in chunks 0 and 2, must be refused") };
        assert!(e.problems[0].message.contains("used by an earlier rule"), "{e}");
    }
}
