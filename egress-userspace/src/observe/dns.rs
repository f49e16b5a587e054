//! What rules by name learned, as `egress dns` shows it, and the DNS section
//! of `egress counters`.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::dataplane::{DnsReadout, PatternInfo, State};

/// One row: name, address, pattern, rule, seconds left.
struct Row<'a> {
    name: &'a str,
    address: String,
    pattern: &'a str,
    rule: &'a str,
    expires_in: u64,
}

fn rows<'a>(st: &'a State, r: &'a DnsReadout) -> Vec<Row<'a>> {
    r.learned
        .iter()
        .map(|l| {
            let p = PatternInfo::of_id(&st.patterns, l.pattern);
            Row {
                name: &l.name,
                address: l.address.to_string(),
                pattern: p.map_or("?", |p| p.pattern.as_str()),
                rule: p.map_or("?", |p| p.rule.as_str()),
                expires_in: l.expires_in,
            }
        })
        .collect()
}

/// `egress dns --json`: an array of {name, address, pattern, rule, expires_in}.
pub fn learned_json(st: &State, r: &DnsReadout) -> Value {
    Value::Array(
        rows(st, r)
            .iter()
            .map(|x| json!({"name": x.name, "address": x.address, "pattern": x.pattern, "rule": x.rule, "expires_in": x.expires_in}))
            .collect(),
    )
}

/// `egress dns`: a table.
pub fn learned_table(st: &State, r: &DnsReadout) -> String {
    let rows = rows(st, r);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "learned from DNS on {} in netns {} ({} hook): {} address(es) for {} pattern(s)",
        st.iface,
        st.netns,
        st.hook,
        rows.len(),
        st.patterns.len()
    );
    if rows.is_empty() {
        return out;
    }
    let w = |f: &dyn Fn(&Row) -> usize, h: &str| rows.iter().map(f).max().unwrap_or(0).max(h.len());
    let (wn, wa, wp, wr) = (
        w(&|x| x.name.len(), "NAME"),
        w(&|x| x.address.len(), "ADDRESS"),
        w(&|x| x.pattern.len(), "PATTERN"),
        w(&|x| x.rule.len(), "RULE"),
    );
    let _ = writeln!(out, "{:wn$}  {:wa$}  {:wp$}  {:wr$}  EXPIRES IN", "NAME", "ADDRESS", "PATTERN", "RULE");
    for x in &rows {
        let _ = writeln!(out, "{:wn$}  {:wa$}  {:wp$}  {:wr$}  {}s", x.name, x.address, x.pattern, x.rule, x.expires_in);
    }
    out
}

/// The DNS counters as JSON (keys: egress-common's `DNS_STAT_NAMES`, and
/// `addresses_now`, the live learned entries).
pub fn stats_json(r: &DnsReadout) -> Value {
    let mut m = serde_json::Map::new();
    for (i, n) in egress_common::DNS_STAT_NAMES.iter().enumerate() {
        m.insert(n.to_string(), json!(r.stats.get(i).copied().unwrap_or(0)));
    }
    m.insert("addresses_now".into(), json!(r.learned.len()));
    Value::Object(m)
}

/// The counters table's DNS line.
pub fn stats_line(r: &DnsReadout) -> String {
    let s = |i: u32| r.stats.get(i as usize).copied().unwrap_or(0);
    use egress_common::*;
    format!(
        "dns: {} addresses learned now; answers learned from {}, addresses learned {}, refreshed {}, evicted {}; \
         ignored: not from a resolver {}, no matching query {}, malformed {}, table full {}; queries seen {}, denied {}\n",
        r.learned.len(),
        s(DS_ANSWERS),
        s(DS_LEARNED),
        s(DS_REFRESHED),
        s(DS_EVICTED),
        s(DS_NOT_RESOLVER),
        s(DS_NO_QUERY),
        s(DS_MALFORMED),
        s(DS_TABLE_FULL),
        s(DS_QUERIES),
        s(DS_QUERIES_DENIED)
    )
}
