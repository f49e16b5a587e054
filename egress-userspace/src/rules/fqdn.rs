//! Rules by domain name in the rule file: `dst_fqdn` patterns and the `[dns]`
//! table. Pure.
//!
//! ```toml
//! [dns]
//! resolvers = ["192.0.2.53", "2001:db8::53"]  # answers are trusted only from these
//! min_ttl = 60            # seconds an address is kept at least
//! max_ttl = 86400         # and at most
//! max_addresses = 65536   # learned-address table size, per family
//!
//! [[rule]]
//! dst_fqdn = ["deb.debian.org", "*.cdn.example.com"]
//! ```

use std::{net::IpAddr, ops::Range};

use toml_edit::{Item, Table, Value};

use super::{
    Rule,
    parse::{Ctx, show},
    toml_diag::{item_span, suggest},
};
use egress_common::{DNS_DEFAULT_MAX_ADDRESSES, DNS_DEFAULT_MAX_TTL, DNS_DEFAULT_MIN_TTL, DNS_MAX_MAX_ADDRESSES, DNS_MAX_RESOLVERS};

const DNS_KEYS: [&str; 4] = ["resolvers", "min_ttl", "max_ttl", "max_addresses"];
/// Longest TTL bound accepted, seconds (30 days).
pub const MAX_TTL_BOUND: u64 = 30 * 86_400;
/// Most patterns one rule may list.
pub const MAX_PATTERNS_PER_RULE: usize = 4096;

/// `[dns]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsConfig {
    pub resolvers: Vec<IpAddr>,
    pub min_ttl: u64,
    pub max_ttl: u64,
    /// Learned addresses per family (the table's size).
    pub max_addresses: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            resolvers: Vec::new(),
            min_ttl: DNS_DEFAULT_MIN_TTL,
            max_ttl: DNS_DEFAULT_MAX_TTL,
            max_addresses: DNS_DEFAULT_MAX_ADDRESSES,
        }
    }
}

impl DnsConfig {
    /// `egress check`'s lines for a rule set by name: the settings, then each
    /// pattern with the rules naming it.
    pub fn summary(&self, rs: &super::RuleSet) -> Vec<String> {
        let res: Vec<String> = self.resolvers.iter().map(|a| a.to_string()).collect();
        let mut out = vec![format!(
            "dns: resolvers {}; addresses kept {}s to {}s; {} learned addresses per family",
            res.join(", "),
            self.min_ttl,
            self.max_ttl,
            self.max_addresses
        )];
        for p in rs.patterns() {
            let rules: Vec<&str> = rs.rules.iter().filter(|r| r.fqdn.iter().any(|f| f == p)).map(|r| r.name.as_str()).collect();
            out.push(format!("  name {p}: rule {}", rules.join(", ")));
        }
        out
    }

    /// `egress check --json`'s "dns" (only for a rule set that names domains).
    pub fn json(&self, rs: &super::RuleSet) -> serde_json::Value {
        let patterns: Vec<serde_json::Value> = rs
            .patterns()
            .iter()
            .map(|p| {
                let rules: Vec<&str> = rs.rules.iter().filter(|r| r.fqdn.iter().any(|f| f == p)).map(|r| r.name.as_str()).collect();
                serde_json::json!({"pattern": p, "rules": rules})
            })
            .collect();
        serde_json::json!({"resolvers": self.resolvers, "min_ttl": self.min_ttl, "max_ttl": self.max_ttl,
                           "max_addresses": self.max_addresses, "patterns": patterns})
    }
}

/// Reads `[dns]`; None when absent.
pub(super) fn parse_dns(cx: &mut Ctx<'_>, root: &Table) -> Option<DnsConfig> {
    let item = root.get("dns")?;
    let Some(t) = item.as_table_like() else {
        cx.push(item_span(item), None, Some("dns"), "must be a table: [dns]".into());
        return None;
    };
    let mut c = DnsConfig::default();
    for (k, v) in t.iter() {
        let field = format!("dns.{k}");
        let span = item_span(v);
        match k {
            "resolvers" => match resolvers(v) {
                Ok(r) => c.resolvers = r,
                Err(m) => cx.push(span, None, Some(&field), m),
            },
            "min_ttl" | "max_ttl" => match v.as_integer() {
                Some(n) if (1..=MAX_TTL_BOUND as i64).contains(&n) => {
                    if k == "min_ttl" {
                        c.min_ttl = n as u64;
                    } else {
                        c.max_ttl = n as u64;
                    }
                }
                _ => cx.push(span, None, Some(&field), format!("must be seconds from 1 to {MAX_TTL_BOUND} (30 days), not {}", show(v))),
            },
            "max_addresses" => match v.as_integer() {
                Some(n) if (16..=i64::from(DNS_MAX_MAX_ADDRESSES)).contains(&n) => c.max_addresses = n as u32,
                _ => cx.push(
                    span,
                    None,
                    Some(&field),
                    format!("must be the learned addresses kept per family, 16 to {DNS_MAX_MAX_ADDRESSES}, not {}", show(v)),
                ),
            },
            _ => cx.push(span, None, Some(&field), suggest(k, &DNS_KEYS)),
        }
    }
    if c.min_ttl > c.max_ttl {
        cx.push(
            item_span(item),
            None,
            Some("dns.min_ttl"),
            format!("min_ttl ({}) is more than max_ttl ({}): addresses are kept clamp(TTL, min_ttl, max_ttl)", c.min_ttl, c.max_ttl),
        );
    }
    Some(c)
}

fn resolvers(v: &Item) -> Result<Vec<IpAddr>, String> {
    let items: Vec<&Value> = match v.as_value() {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(s @ Value::String(_)) => vec![s],
        _ => return Err(format!("must be a list of resolver addresses, not {}", show(v))),
    };
    let mut out = Vec::new();
    for (i, x) in items.iter().enumerate() {
        let Some(s) = x.as_str() else {
            return Err(format!("entry {}: must be an address string, not {}", i + 1, x.type_name()));
        };
        match s.trim().parse::<IpAddr>() {
            Ok(a) if !out.contains(&a) => out.push(a),
            Ok(_) => {}
            Err(_) => return Err(format!("entry {}: '{s}' is not an IPv4 or IPv6 address", i + 1)),
        }
    }
    if out.is_empty() {
        return Err("lists no resolver: name the resolvers whose answers may teach addresses".into());
    }
    if out.len() > DNS_MAX_RESOLVERS as usize {
        return Err(format!("{} resolvers, more than the {DNS_MAX_RESOLVERS} accepted", out.len()));
    }
    Ok(out)
}

/// `dst_fqdn`: a pattern or a list of them, each normalised (lower case, no
/// trailing dot); duplicates dropped. Problems go to `cx`.
pub(super) fn parse_fqdn(cx: &mut Ctx<'_>, item: &Item, span: Option<Range<usize>>, rule: Option<&str>) -> Option<Vec<String>> {
    let items: Vec<&Value> = match item.as_value() {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(s @ Value::String(_)) => vec![s],
        _ => {
            cx.push(span, rule, Some("dst_fqdn"), format!("must be a domain name or a list of them, not {}", show(item)));
            return None;
        }
    };
    let mut out: Vec<String> = Vec::new();
    let before = cx.problems.len();
    for (i, v) in items.iter().enumerate() {
        let Some(s) = v.as_str() else {
            cx.push(span.clone(), rule, Some("dst_fqdn"), format!("entry {}: must be a string, not {}", i + 1, v.type_name()));
            continue;
        };
        match normalize_pattern(s) {
            Ok(p) if !out.contains(&p) => out.push(p),
            Ok(_) => {}
            Err(m) => cx.push(span.clone(), rule, Some("dst_fqdn"), format!("entry {} ('{s}'): {m}", i + 1)),
        }
    }
    if out.is_empty() && cx.problems.len() == before {
        cx.push(span.clone(), rule, Some("dst_fqdn"), "lists no name".into());
    }
    if out.len() > MAX_PATTERNS_PER_RULE {
        cx.push(span, rule, Some("dst_fqdn"), format!("{} names, more than the {MAX_PATTERNS_PER_RULE} one rule may hold", out.len()));
    }
    (cx.problems.len() == before).then_some(out)
}

/// A pattern as written -> its canonical form (lower case, no trailing dot),
/// or why it is not one: an exact name or `*.` and a name, in A-label form.
pub fn normalize_pattern(s: &str) -> Result<String, String> {
    let t = s.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    if t.is_empty() {
        return Err("empty name".into());
    }
    let (wild, name) = match t.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if name.len() > 253 {
        return Err(format!("the name is {} bytes long, more than DNS's 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label (two dots in a row, or a leading dot)".into());
        }
        if label == "*" {
            return Err("'*' is allowed only as the whole leftmost label ('*.example.com')".into());
        }
        if label.len() > 63 {
            return Err(format!("the label '{label}' is {} bytes long, more than DNS's 63", label.len()));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            let hint = if c.is_ascii() { "" } else { " (write internationalised names in A-label form: xn--...)" };
            return Err(format!("'{c}' is not a character of a DNS name{hint}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label '{label}' starts or ends with '-'"));
        }
    }
    let name = name.to_ascii_lowercase();
    Ok(if wild { format!("*.{name}") } else { name })
}

/// Whether a (canonical) pattern matches a name (any case, trailing dot or not).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => n.len() > suffix.len() + 1 && n.ends_with(suffix) && n.as_bytes()[n.len() - suffix.len() - 1] == b'.',
        None => n == pattern,
    }
}

/// A pattern's id: an unkeyed hash of its canonical text (FNV-1a, 64 bits),
/// stable across reloads and runs; never 0 (id 0 is every pattern's rules).
pub fn pattern_id(pattern: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pattern.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// Every rule naming a domain needs `[dns] resolvers`.
pub(super) fn check_resolvers(cx: &mut Ctx<'_>, rules: &[Rule], dns: &Option<DnsConfig>) {
    if dns.as_ref().is_some_and(|d| !d.resolvers.is_empty()) {
        return;
    }
    if let Some(r) = rules.iter().find(|r| !r.fqdn.is_empty()) {
        let at = cx.line_starts.get(r.line.saturating_sub(1)).map(|&s| s.saturating_sub(cx.offset)..s.saturating_sub(cx.offset));
        cx.push(
            at,
            Some(&r.name),
            Some("dst_fqdn"),
            "names a domain, so the file needs [dns] resolvers = [\"ADDRESS\", ...]: answers teach addresses only from those resolvers"
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_normalised_and_checked() {
        assert_eq!(normalize_pattern("Deb.Debian.ORG.").unwrap(), "deb.debian.org");
        assert_eq!(normalize_pattern("*.CDN.example.com").unwrap(), "*.cdn.example.com");
        for bad in ["", ".", "a..b", "*", "a.*.b", "**.a", "a b.c", "-a.b", "b\u{e9}.fr", &format!("{}.com", "a".repeat(64))] {
            assert!(normalize_pattern(bad).is_err(), "{bad:?} accepted");
        }
        let long = vec!["a".repeat(50); 6].join(".");
        assert!(normalize_pattern(&long).unwrap_err().contains("253"));
    }

    #[test]
    fn wildcards_match_below_the_suffix_only() {
        assert!(pattern_matches("*.bad.example", "x.bad.example"));
        assert!(pattern_matches("*.bad.example", "a.b.BAD.example."));
        assert!(!pattern_matches("*.bad.example", "bad.example"));
        assert!(!pattern_matches("*.bad.example", "xbad.example"));
        assert!(pattern_matches("bad.example", "BAD.example."));
        assert!(!pattern_matches("bad.example", "x.bad.example"));
    }

    #[test]
    fn kernel_and_user_hashes_agree_on_suffixes() {
        use egress_common::{dns_label_byte, dns_label_end, dns_label_start, dns_name_hash, dns_suffix};
        let (k0, k1) = (0x1234, 0x5678);
        // The program folds label hashes from the right; "Www.Example.COM".
        let labels: [&[u8]; 3] = [b"Www", b"Example", b"COM"];
        let mut acc = k1;
        for l in labels.iter().rev() {
            let mut h = dns_label_start(k0);
            for &b in *l {
                h = dns_label_byte(h, b);
            }
            acc = dns_suffix(acc, dns_label_end(h, l.len() as u8), k1);
        }
        let lower: [&[u8]; 3] = [b"www", b"example", b"com"];
        assert_eq!(acc, dns_name_hash(lower.iter().copied(), k0, k1));
        assert_ne!(acc, dns_name_hash(lower[1..].iter().copied(), k0, k1));
        assert_ne!(acc, dns_name_hash(lower.iter().copied(), k0 + 1, k1));
    }
}
