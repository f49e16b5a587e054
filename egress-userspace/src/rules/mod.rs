//! The rule file: TOML text -> validated [`RuleSet`]. Pure: no syscalls, no I/O
//! besides what the caller hands in. Every problem is reported with the file, the
//! line, the rule and the field, and all problems are reported at once.
//!
//! - this file: the validated rule model and the problem type;
//! - `parse`: the one-piece parser and per-rule validation;
//! - `chunked`: large files cut at rule headers and parsed on all CPUs;
//! - `toml_diag`: line numbers, did-you-mean (shared with the `egress run` config).

mod chunked;
mod events;
mod fqdn;
mod incremental;
mod parse;
mod sets;
mod state;
pub(crate) mod toml_diag;

use std::fmt;

use ipnet::IpNet;

pub use events::EventsConfig;
pub use fqdn::{DnsConfig, normalize_pattern, pattern_id, pattern_matches};
pub use incremental::{Edited, ParseCache, Reuse, parse_incremental};
pub use parse::{MAX_NAME_LEN, merge_intervals, parse, parse_cidr, parse_ports, parse_with};
pub use state::StateConfig;

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
    /// `None`: any destination address. A rule by name (`dst_fqdn`) has
    /// `Some(empty)`: no address matches it as such, only learned ones do.
    pub dst: Option<Vec<IpNet>>,
    /// `dst_fqdn`: canonical patterns (`name` or `*.suffix`); empty for an
    /// address rule.
    pub fqdn: Vec<String>,
    pub protocol: Protocol,
    /// Destination ports (tcp/udp only): inclusive intervals, sorted, merged
    /// (no two overlap or touch), never empty.
    pub ports: Option<Vec<(u16, u16)>>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// The families this rule can match (never empty after validation).
    pub families: Families,
    /// A deny rule in audit mode (`mode = "audit"`, its own or the file's):
    /// counted as a deny, but the packet passes.
    pub audit: bool,
    /// The sets `src` and `dst` name (`@name`): their entries follow the
    /// rule's own CIDRs in `src`/`dst`.
    pub sets: SetRefs,
}

/// A rule's `@name` references. `src`/`dst` hold the rule's own CIDRs first
/// (`src_own` / `dst_own` of them), then the named sets' entries, merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetRefs {
    pub src: Vec<String>,
    pub dst: Vec<String>,
    pub src_own: usize,
    pub dst_own: usize,
}

impl Rule {
    /// The action as the program stores it (audit included).
    pub fn code(&self) -> u32 {
        if self.audit { egress_common::ACTION_AUDIT } else { self.action.code() }
    }

    /// The 16-bit intervals of the last lookup stage this rule covers
    /// (sorted, disjoint): destination ports for tcp/udp, `type << 8 | code`
    /// for ICMP, everything otherwise.
    pub fn l4_ranges(&self) -> L4Ranges<'_> {
        if let Some(p) = &self.ports {
            return L4Ranges::Many(p);
        }
        L4Ranges::One([match (self.icmp_type, self.icmp_code) {
            (Some(t), Some(c)) => {
                let v = (t as u16) << 8 | c as u16;
                (v, v)
            }
            (Some(t), None) => ((t as u16) << 8, (t as u16) << 8 | 0xff),
            _ => (0, u16::MAX),
        }])
    }

    /// True when the rule constrains no L4 field, so it can match a packet whose
    /// L4 header is absent (non-first fragment).
    pub fn l4_any(&self) -> bool {
        self.ports.is_none() && self.icmp_type.is_none()
    }

    /// A one-line match summary, like the middle columns of `iptables -L`; a
    /// set is shown by its name (`@blocklist`), not its entries, so a changed
    /// set file keeps the rule's identity (and its counters).
    pub fn summary(&self) -> String {
        let nets = |n: &Option<Vec<IpNet>>, own: usize, sets: &[String]| match n {
            None => "any".to_string(),
            Some(v) if sets.is_empty() => v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
            Some(v) => v[..own].iter().map(|n| n.to_string()).chain(sets.iter().map(|s| format!("@{s}"))).collect::<Vec<_>>().join(","),
        };
        let src = nets(&self.src, self.sets.src_own, &self.sets.src);
        let dst = if self.fqdn.is_empty() { nets(&self.dst, self.sets.dst_own, &self.sets.dst) } else { self.fqdn.join(",") };
        let mut s = format!("{} {src} -> {dst}", self.protocol.as_str());
        if let Some(p) = &self.ports {
            s.push_str(" dport ");
            s.push_str(&ports_text(p));
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

/// A rule's L4 intervals: one (no allocation) or its port list.
pub enum L4Ranges<'a> {
    One([(u16, u16); 1]),
    Many(&'a [(u16, u16)]),
}

impl std::ops::Deref for L4Ranges<'_> {
    type Target = [(u16, u16)];
    fn deref(&self) -> &[(u16, u16)] {
        match self {
            L4Ranges::One(a) => a,
            L4Ranges::Many(v) => v,
        }
    }
}

/// A port list as written back: `25`, `80,443,8000-8100`.
pub fn ports_text(p: &[(u16, u16)]) -> String {
    p.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect::<Vec<_>>().join(",")
}

/// A whole validated rule file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub default_policy: Action,
    /// `mode = "audit"` at the top: every deny (rules without their own `mode`,
    /// and a deny default policy) is counted but passes.
    pub audit: bool,
    pub rules: Vec<Rule>,
    /// `Some` when the file says `stateful = true` (with `[state]`'s settings).
    pub state: Option<StateConfig>,
    /// `[events]`: the deny events' rate limit per rule.
    pub events: EventsConfig,
    /// The `[[set]]`s, in file order.
    pub sets: Vec<crate::sets::Set>,
    /// `[dns]` (rules by domain name).
    pub dns: Option<DnsConfig>,
}

impl RuleSet {
    /// Whether any rule names a source (CIDRs or sets).
    pub fn names_sources(&self) -> bool {
        self.rules.iter().any(|r| r.src.is_some() || !r.sets.src.is_empty())
    }

    /// The set named `name`.
    pub fn set(&self, name: &str) -> Option<&crate::sets::Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// Whether any rule names a domain (`dst_fqdn`).
    pub fn has_fqdn(&self) -> bool {
        self.rules.iter().any(|r| !r.fqdn.is_empty())
    }

    /// The distinct patterns of the rule set, in order of first appearance.
    pub fn patterns(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.rules.iter().flat_map(|r| r.fqdn.iter()).map(String::as_str).filter(|p| seen.insert(*p)).collect()
    }

    /// The default policy as the program stores it (audit included).
    pub fn default_code(&self) -> u32 {
        if self.audit && self.default_policy == Action::Deny { egress_common::ACTION_AUDIT } else { self.default_policy.code() }
    }
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

#[cfg(test)]
mod tests {
    use super::{
        chunked::{CHUNK_RULES, parse_chunked},
        parse::{parse_limited, parse_whole, rule_headers},
        toml_diag::line_starts,
        *,
    };

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
        assert_eq!((r.name.as_str(), r.action, r.ports.clone(), r.line), ("no-smtp", Action::Deny, Some(vec![(25, 25)]), 2));
        assert_eq!(r.families, Families { v4: true, v6: false });
        let r = &rs.rules[1];
        assert_eq!((r.name.as_str(), r.action, r.icmp_type, r.icmp_code), ("rule-2", Action::Deny, Some(8), Some(0)));
        assert_eq!(r.families, Families { v4: true, v6: false });
        assert_eq!(*r.l4_ranges(), [(0x0800, 0x0800)]);
        let r = &rs.rules[2];
        assert_eq!(r.families, Families { v4: false, v6: true });
        assert_eq!(r.ports, Some(vec![(1000, 2000)]));
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
        assert_eq!(
            e[0],
            "r.toml:2: field 'verbose': unknown key 'verbose' (known keys: default_policy, mode, stateful, state, events, geoip, set, dns, rule)"
        );
        assert_eq!(e[1], "r.toml:4: rule 'rule-1', field 'protcol': unknown key 'protcol' (did you mean 'protocol'?)");
    }

    #[test]
    fn stateful_mode_and_its_settings() {
        let rs = parse("r.toml", "default_policy = \"allow\"\n").unwrap();
        assert_eq!(rs.state, None);
        let rs = parse("r.toml", "stateful = true\ndefault_policy = \"deny\"\n").unwrap();
        assert_eq!(rs.state, Some(StateConfig::default()));
        let rs = parse("r.toml", "stateful = true\ndefault_policy = \"deny\"\n[state]\nudp = 5\nmax_flows = 1024\n").unwrap();
        assert_eq!(rs.state.map(|s| (s.udp, s.max_flows, s.icmp)), Some((5, 1024, egress_common::DEFAULT_ICMP_S)));
        let e = err("default_policy = \"deny\"\n[state]\nudp = 5\n");
        assert_eq!(e, vec!["r.toml:2: field 'state': [state] has no effect without stateful = true at the top of the file"]);
        let e = err("stateful = 1\ndefault_policy = \"deny\"\n[state]\nicmp = 0\ntcp_closing = \"2m\"\nmax_flows = 8\n");
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("r.toml:1: field 'stateful': must be true or false"), "{e:?}");
        assert!(e[1].starts_with("r.toml:4: field 'state.icmp': 0 is out of range"), "{e:?}");
        assert!(e[2].starts_with("r.toml:5: field 'state.tcp_closing': must be an integer"), "{e:?}");
        assert!(e[3].starts_with("r.toml:6: field 'state.max_flows': 8 is out of range"), "{e:?}");
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
        assert_eq!(rs.rules[0].ports, Some(vec![(53, 53)]));
        assert_eq!(rs.rules[1].ports, Some(vec![(0, 65535)]));
    }

    #[test]
    fn port_lists_merge_and_name_the_bad_entry() {
        let ports = |v: &str| {
            parse("p.toml", &format!("default_policy = \"deny\"\n[[rule]]\nprotocol = \"tcp\"\nports = {v}\n"))
                .map(|rs| rs.rules[0].ports.clone().unwrap())
        };
        assert_eq!(ports("[80, 443, \"8000-8100\"]").unwrap(), vec![(80, 80), (443, 443), (8000, 8100)]);
        assert_eq!(ports("\"80,443\"").unwrap(), vec![(80, 80), (443, 443)]);
        assert_eq!(ports("\" 443 , 80 \"").unwrap(), vec![(80, 80), (443, 443)]);
        // Overlapping and adjacent entries merge; order does not matter.
        assert_eq!(ports("[\"8000-8100\", 8101, \"8050-8060\", 22, 21, 23]").unwrap(), vec![(21, 23), (8000, 8101)]);
        assert_eq!(ports("[\"0-100\", \"101-65535\"]").unwrap(), vec![(0, 65535)]);
        assert_eq!(ports("[\"80,81\", 82]").unwrap(), vec![(80, 82)]);
        let e = |v: &str| ports(v).unwrap_err().problems[0].to_string();
        assert_eq!(e("[80, 70000]"), "p.toml:4: rule 'rule-1', field 'ports': entry 2: 70000 is not a port number from 0 to 65535");
        assert_eq!(
            e("[80, \"90-85\"]"),
            "p.toml:4: rule 'rule-1', field 'ports': entry 2: range '90-85' is empty: the first port is greater than the last"
        );
        assert_eq!(
            e("\"80,,443\""),
            "p.toml:4: rule 'rule-1', field 'ports': entry 2: empty entry (two commas in a row, or a comma at an end)"
        );
        assert_eq!(
            e("\"80,\""),
            "p.toml:4: rule 'rule-1', field 'ports': entry 2: empty entry (two commas in a row, or a comma at an end)"
        );
        assert_eq!(e("[]"), "p.toml:4: rule 'rule-1', field 'ports': an empty list matches no port; omit 'ports' to match every port");
        assert!(e("[80, true]").contains("entry 2 must be a port (80)"), "{}", e("[80, true]"));
        assert!(e("[80, -1]").ends_with("entry 2: -1 is not a port number from 0 to 65535"), "{}", e("[80, -1]"));
        assert!(e("\"80,-1\"").ends_with("entry 2: '-1' is not a port number from 0 to 65535 or a range N-M"), "{}", e("\"80,-1\""));
        assert!(e("\"80,x\"").ends_with("entry 2: 'x' is not a port number from 0 to 65535"), "{}", e("\"80,x\""));
        // The summary writes the merged list back.
        let rs = parse("p.toml", "default_policy = \"deny\"\n[[rule]]\nprotocol = \"tcp\"\nports = [443, 80, \"8000-8100\"]\n").unwrap();
        assert_eq!(rs.rules[0].summary(), "tcp any -> any dport 80,443,8000-8100");
        assert_eq!(rs.rules[0].l4_ranges().len(), 3);
    }

    #[test]
    fn events_table_sets_the_rate_limit_and_refuses_bad_values() {
        let rs = parse("e.toml", "default_policy = \"allow\"\n[events]\nrate = 0\nburst = 5\n").unwrap();
        assert_eq!((rs.events.rate, rs.events.burst), (0, 5));
        assert_eq!(parse("e.toml", "default_policy = \"allow\"\n").unwrap().events, EventsConfig::default());
        let e = parse("e.toml", "default_policy = \"allow\"\n[events]\nrate = 1000000\nburst = 0\nrte = 1\n").unwrap_err().to_string();
        assert!(e.contains("e.toml:3: field 'events.rate': 1000000 is out of range"), "{e}");
        assert!(e.contains("e.toml:4: field 'events.burst': 0 is out of range"), "{e}");
        assert!(e.contains("e.toml:5: field 'events.rte': unknown key 'rte' (did you mean 'rate'?)"), "{e}");
    }

    #[test]
    fn audit_mode_per_file_and_per_rule() {
        let rs = parse(
            "m.toml",
            "default_policy = \"deny\"\nmode = \"audit\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nprotocol = \"udp\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nmode = \"enforce\"\nprotocol = \"tcp\"\n[[rule]]\nname = \"c\"\naction = \"allow\"\n",
        )
        .unwrap();
        let audit: Vec<bool> = rs.rules.iter().map(|r| r.audit).collect();
        assert_eq!(audit, vec![true, false, false]);
        assert_eq!((rs.default_code(), rs.rules[0].code()), (egress_common::ACTION_AUDIT, egress_common::ACTION_AUDIT));
        let rs = parse("m.toml", "default_policy = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nmode = \"audit\"\n").unwrap();
        assert_eq!((rs.rules[0].audit, rs.default_code()), (true, egress_common::ACTION_ALLOW));
        let e = parse(
            "m.toml",
            "default_policy = \"allow\"\nmode = \"dry-run\"\n[[rule]]\nname = \"a\"\naction = \"allow\"\nmode = \"audit\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("m.toml:2: field 'mode': must be \"enforce\" (deny drops) or \"audit\""), "{e}");
        assert!(e.contains("m.toml:6: rule 'a', field 'mode': \"audit\" applies to deny rules"), "{e}");
    }

    #[test]
    fn chunked_parse_equals_the_one_piece_parse_for_mid_sized_files() {
        // One chunk per CPU (on a machine with more than one).
        let text = crate::ruleset_gen::realistic(1000, 100, 5);
        let starts = line_starts(&text);
        let chunked = parse_chunked("mid.toml", &text, &starts, &rule_headers(&text, &starts), &crate::sets::NoFiles);
        let whole = parse_whole("mid.toml", &text, &starts, egress_common::MAX_RULES as usize, &crate::sets::NoFiles).unwrap();
        if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2 {
            assert_eq!(chunked.expect("1,000 rules take the chunked path on 2 CPUs"), whole);
        } else {
            assert!(chunked.is_none());
        }
    }

    #[test]
    fn chunked_parse_equals_the_one_piece_parse() {
        let text = crate::ruleset_gen::realistic(3 * CHUNK_RULES + 17, 100, 3);
        let starts = line_starts(&text);
        let max = egress_common::MAX_RULES as usize;
        let chunked = parse_chunked("big.toml", &text, &starts, &rule_headers(&text, &starts), &crate::sets::NoFiles)
            .expect("a plain generated file takes the chunked path");
        assert_eq!(chunked, parse_whole("big.toml", &text, &starts, max, &crate::sets::NoFiles).unwrap());
        // The file-wide audit mode reaches every chunk.
        let audit = format!("mode = \"audit\"\n{text}");
        let starts_a = line_starts(&audit);
        let chunked = parse_chunked("big.toml", &audit, &starts_a, &rule_headers(&audit, &starts_a), &crate::sets::NoFiles)
            .expect("chunked with mode");
        assert_eq!(chunked, parse_whole("big.toml", &audit, &starts_a, max, &crate::sets::NoFiles).unwrap());
        assert!(chunked.audit && chunked.rules.iter().any(|r| r.audit));
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

    /// The rule-count limit holds on both paths (the header count before any
    /// parse, the one-piece parse's table count) with one message and line.
    #[test]
    fn rule_count_limit_holds_on_every_path() {
        let n = 3 * CHUNK_RULES + 17;
        let text = crate::ruleset_gen::realistic(n, 100, 3);
        let starts = line_starts(&text);
        let limit = 3 * CHUNK_RULES;
        let first_over = text.match_indices("[[rule]]").nth(limit).map(|(i, _)| i).unwrap();
        let line = text[..first_over].lines().count() + 1;
        let Err(pre) = parse_limited("big.toml", &text, limit, &crate::sets::NoFiles) else { panic!("over the limit must be refused") };
        let Err(whole) = parse_whole("big.toml", &text, &starts, limit, &crate::sets::NoFiles) else {
            panic!("over the limit must be refused")
        };
        assert_eq!(pre.to_string(), whole.to_string());
        assert_eq!(pre.problems.len(), 1, "{pre}");
        assert_eq!(pre.problems[0].line, line);
        let msg = format!("{n} rules, more than the {limit} a rule file may hold (this is rule {})", limit + 1);
        assert_eq!(pre.problems[0].message, msg);
        // At the limit: accepted by both paths, equal.
        assert_eq!(
            parse_limited("big.toml", &text, n, &crate::sets::NoFiles).unwrap(),
            parse_whole("big.toml", &text, &starts, n, &crate::sets::NoFiles).unwrap()
        );
        // Inline rule tables (no header lines) meet the one-piece parse's count.
        let inline = "default_policy = \"allow\"\nrule = [{ name = \"a\" , action = \"deny\" }, { name = \"b\", action = \"deny\" }]\n";
        let Err(e) = parse_limited("i.toml", inline, 1, &crate::sets::NoFiles) else { panic!("two inline rules over a limit of one") };
        assert!(e.to_string().contains("i.toml:2: field 'rule': 2 rules, more than the 1 a rule file may hold (this is rule 2)"), "{e}");
        // The real limit, on a file past it: refused without parsing.
        let mut big = String::from("default_policy = \"allow\"\n");
        for i in 0..egress_common::MAX_RULES as usize + 1 {
            big.push_str(&format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\n"));
        }
        let Err(e) = parse("huge.toml", &big) else { panic!("too many rules must be refused") };
        assert!(e.to_string().contains(&format!("more than the {} a rule file may hold", egress_common::MAX_RULES)), "{e}");
    }
}
