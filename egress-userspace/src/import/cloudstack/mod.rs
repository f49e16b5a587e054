//! CloudStack egress firewall rules -> an egress rule file (pure: text in, text
//! out). Input: the JSON of `listEgressFirewallRules` as the API returns it
//! (`{"listegressfirewallrulesresponse": {"count": N, "firewallrule": [...]}}`),
//! as cloudmonkey prints it (`{"count": N, "firewallrule": [...]}`), or a bare
//! array of rule objects. Numbers may be JSON integers or strings (CloudStack
//! versions differ). The default egress policy comes from the caller or from a
//! `listNetworkOfferings` / `listNetworks` response (`egressdefaultpolicy`,
//! true = allow).
//!
//! CloudStack's semantics: under a default allow policy every egress rule
//! denies what it matches, under default deny every rule allows; no two rules
//! differ in verdict, so their order changes nothing (the API's order is kept).
//! Its validation is applied (ports only with tcp/udp, 1..65535, start <= end;
//! ICMP type and code -1 (any) or 0..255, only with icmp; valid CIDRs), plus
//! ours: CIDRs with host bits are refused by CloudStack's API but written by
//! hand exports; they are narrowed to their network and said so in the rule's
//! comment. IPv6 CIDRs (CloudStack's IPv6 firewall) are taken as they are.

use ipnet::IpNet;
use serde_json::Value;

use crate::rules::Action;

mod policy;
mod write;

use policy::default_policy;
pub use write::verb;
use write::write;

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The network's default egress policy (`--default-policy`).
    pub default_policy: Option<Action>,
    /// A `listNetworkOfferings` or `listNetworks` response: (file name, text).
    pub offering: Option<(String, String)>,
    /// Only the rules of this network (`networkid`).
    pub network: Option<String>,
    /// The guest network's CIDR: the source of rules with an empty `cidrlist`.
    pub guest_cidr: Option<IpNet>,
    /// Write the valid rules and list the invalid ones instead of failing.
    pub skip_invalid: bool,
    /// Rules that differ only in their ports become one rule with a port list.
    pub merge_ports: bool,
}

impl Options {
    /// The options the bits of `sel` pick, so that one byte reaches every path
    /// of the importer (the fuzz target's first input byte, and the test that
    /// replays its regressions under all 32): bit 0 default deny, bit 1 a guest
    /// CIDR, bit 2 skip invalid rules, bit 3 only network "net-a", bit 4 merge ports.
    pub fn from_selector(sel: u8) -> Options {
        Options {
            default_policy: Some(if sel & 1 == 0 { Action::Allow } else { Action::Deny }),
            guest_cidr: (sel & 2 != 0).then(|| IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 1, 1, 0), 24))),
            skip_invalid: sel & 4 != 0,
            network: (sel & 8 != 0).then(|| "net-a".to_string()),
            offering: None,
            merge_ports: sel & 16 != 0,
        }
    }
}

/// A CloudStack rule that cannot be imported: which one, which field, why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Position in the input (1-based).
    pub index: usize,
    /// The rule's CloudStack id, when it has one.
    pub id: Option<String>,
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "rule {} (id {id}), field '{}': {}", self.index, self.field, self.message),
            None => write!(f, "rule {}, field '{}': {}", self.index, self.field, self.message),
        }
    }
}

/// The import's result.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The rule file (TOML, commented).
    pub toml: String,
    pub default_policy: Action,
    /// Where the default policy came from ("--default-policy", or the file and entry).
    pub policy_from: String,
    /// Rules written.
    pub rules: usize,
    /// Rules not Active: (id, state).
    pub inactive: Vec<(String, String)>,
    /// Rules of other networks (with `--network`).
    pub other_networks: usize,
    /// Invalid rules left out (`--skip-invalid`): every problem of each.
    pub skipped: Vec<Problem>,
}

impl Imported {
    /// How many rules were left out as invalid (a rule may have several problems).
    pub fn skipped_rules(&self) -> usize {
        let mut at: Vec<usize> = self.skipped.iter().map(|p| p.index).collect();
        at.dedup();
        at.len()
    }
}

/// An import that cannot be done: the input is not what it should be, or
/// rules are invalid (without `--skip-invalid`).
#[derive(Clone, Debug)]
pub enum ImportError {
    /// The input as a whole (not JSON, not a rule list, no default policy).
    Input(String),
    /// Invalid rules, every one.
    Rules(Vec<Problem>),
}

/// One validated CloudStack rule.
pub(super) struct CsRule {
    pub(super) id: String,
    pub(super) protocol: &'static str,
    pub(super) src: Vec<IpNet>,
    pub(super) dst: Vec<IpNet>,
    pub(super) ports: Option<Vec<(u16, u16)>>,
    pub(super) icmp: Option<(u8, Option<u8>)>,
    /// What the comment should say besides the match.
    pub(super) notes: Vec<String>,
}

/// Converts a `listEgressFirewallRules` response (`file` names it in the
/// output) into a rule file.
pub fn import(file: &str, text: &str, o: &Options) -> Result<Imported, ImportError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ImportError::Input(format!("{file}: not valid JSON: {e}")))?;
    let list = rule_list(&doc).ok_or_else(|| {
        ImportError::Input(format!(
            "{file}: not a listEgressFirewallRules response: expected {{\"listegressfirewallrulesresponse\": {{\"firewallrule\": [...]}}}}, {{\"firewallrule\": [...]}} or an array of rule objects"
        ))
    })?;
    let (policy, policy_from) = default_policy(o)?;
    let mut problems = Vec::new();
    let (mut rules, mut inactive, mut other_networks) = (Vec::new(), Vec::new(), 0);
    for (k, v) in list.iter().enumerate() {
        let index = k + 1;
        let Some(obj) = v.as_object() else {
            problems.push(Problem { index, id: None, field: "rule", message: format!("must be an object, not {}", kind(v)) });
            continue;
        };
        let id = obj.get("id").and_then(text_of);
        // A rule without a networkid (a hand-made list) is taken as the network's.
        if let (Some(net), Some(theirs)) = (&o.network, obj.get("networkid").and_then(text_of))
            && theirs != *net
        {
            other_networks += 1;
            continue;
        }
        let state = obj.get("state").and_then(text_of).unwrap_or_else(|| "Active".into());
        if !state.eq_ignore_ascii_case("active") {
            inactive.push((id.clone().unwrap_or_else(|| format!("#{index}")), state));
            continue;
        }
        match rule(index, id, obj, o) {
            Ok(r) => rules.push(r),
            Err(p) => problems.extend(p),
        }
    }
    if !problems.is_empty() && !o.skip_invalid {
        return Err(ImportError::Rules(problems));
    }
    let toml = write(file, policy, &policy_from, &rules, &inactive, &problems, o);
    Ok(Imported { toml, default_policy: policy, policy_from, rules: rules.len(), inactive, other_networks, skipped: problems })
}

/// The rule objects of a response, wherever the format puts them.
fn rule_list(doc: &Value) -> Option<Vec<Value>> {
    match doc {
        Value::Array(a) => Some(a.clone()),
        Value::Object(m) => {
            let inner = m.get("listegressfirewallrulesresponse").unwrap_or(doc);
            let inner = inner.as_object()?;
            match inner.get("firewallrule") {
                Some(Value::Array(a)) => Some(a.clone()),
                Some(_) => None,
                // An empty response has no list at all ({"count": 0} or {}).
                None if m.contains_key("listegressfirewallrulesresponse") || inner.contains_key("count") => Some(Vec::new()),
                None => None,
            }
        }
        _ => None,
    }
}

/// A JSON string or number as text.
pub(super) fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A number given as a JSON integer or a string of one ("80", " -1 ").
fn number(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("must be a whole number, not {n}")),
        Value::String(s) => s.trim().parse().map_err(|_| format!("must be a whole number, not \"{s}\"")),
        other => Err(format!("must be a number, not {}", kind(other))),
    }
}

/// A comma-separated CIDR list (or a JSON array of CIDRs); empty: None.
fn cidrs(v: Option<&Value>, notes: &mut Vec<String>) -> Result<Option<Vec<IpNet>>, String> {
    let items: Vec<String> = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect(),
        Some(Value::Array(a)) => a.iter().map(|x| text_of(x).unwrap_or_default().trim().to_string()).filter(|x| !x.is_empty()).collect(),
        Some(other) => return Err(format!("must be a comma-separated list of CIDRs, not {}", kind(other))),
    };
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for it in items {
        let net: IpNet = match it.parse() {
            Ok(n) => n,
            Err(_) => match it.parse::<std::net::IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => return Err(format!("'{it}' is not a CIDR")),
            },
        };
        if net.trunc() != net {
            notes.push(format!("{it} narrowed to {}", net.trunc()));
        }
        out.push(net.trunc());
    }
    Ok(Some(out))
}

fn rule(index: usize, id: Option<String>, obj: &serde_json::Map<String, Value>, o: &Options) -> Result<CsRule, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut bad = |field: &'static str, message: String| problems.push(Problem { index, id: id.clone(), field, message });
    let mut notes = Vec::new();
    let protocol = match obj.get("protocol") {
        None => {
            bad("protocol", "missing (tcp, udp, icmp or all)".into());
            None
        }
        Some(v) => match text_of(v).map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("tcp") => Some("tcp"),
            Some("udp") => Some("udp"),
            Some("icmp") => Some("icmp"),
            Some("all") => Some("all"),
            _ => {
                bad("protocol", format!("must be tcp, udp, icmp or all, not {v}"));
                None
            }
        },
    };
    let src = match cidrs(obj.get("cidrlist"), &mut notes) {
        Ok(Some(v)) => v,
        Ok(None) => match o.guest_cidr {
            Some(g) => {
                notes.push(format!("empty cidrlist: the guest network {g}"));
                vec![g.trunc()]
            }
            None => {
                bad("cidrlist", "empty, which in CloudStack means the whole guest network: give its CIDR with --guest-cidr".into());
                Vec::new()
            }
        },
        Err(e) => {
            bad("cidrlist", e);
            Vec::new()
        }
    };
    let dst = match cidrs(obj.get("destcidrlist"), &mut notes) {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => {
            bad("destcidrlist", e);
            Vec::new()
        }
    };
    // A number field within `ok`: None when absent or refused (said through `bad`).
    let ranged = |f: &'static str, ok: fn(i64) -> bool, what: &str, bad: &mut dyn FnMut(&'static str, String)| -> Option<i64> {
        let v = obj.get(f).filter(|v| !v.is_null())?;
        match number(v) {
            Ok(n) if ok(n) => Some(n),
            Ok(n) => {
                bad(f, format!("{n} {what}"));
                None
            }
            Err(e) => {
                bad(f, e);
                None
            }
        }
    };
    let port = |f, bad: &mut dyn FnMut(&'static str, String)| {
        ranged(f, |p| (1..=65535).contains(&p), "is not a port (1..65535)", bad).map(|p| p as u16)
    };
    let (start, end) = (port("startport", &mut bad), port("endport", &mut bad));
    let has_ports = obj.get("startport").is_some_and(|v| !v.is_null()) || obj.get("endport").is_some_and(|v| !v.is_null());
    let ports = match (start, end) {
        (Some(s), Some(e)) if s > e => {
            bad("endport", format!("{e} is below startport {s}"));
            None
        }
        (Some(s), Some(e)) => Some(vec![(s, e)]),
        // CloudStack takes a missing end as the start, and a missing start as the end.
        (Some(p), None) | (None, Some(p)) => Some(vec![(p, p)]),
        (None, None) => None,
    };
    let icmp_field = |f, bad: &mut dyn FnMut(&'static str, String)| {
        ranged(f, |n| n == -1 || (0..=255).contains(&n), "is out of range (-1 for any, or 0..255)", bad)
    };
    let (ty, code) = (icmp_field("icmptype", &mut bad), icmp_field("icmpcode", &mut bad));
    let mut icmp = None;
    match protocol {
        Some("tcp" | "udp") if ty.is_some() || code.is_some() => {
            bad(if ty.is_some() { "icmptype" } else { "icmpcode" }, "ICMP type and code go with protocol icmp only".into());
        }
        Some("tcp" | "udp") => {}
        Some(p) => {
            if has_ports {
                bad("startport", format!("ports go with tcp and udp only, not {p}"));
            }
            if p == "icmp" {
                icmp = match (ty, code) {
                    (None | Some(-1), c) => {
                        if c.is_some_and(|c| c != -1) {
                            notes.push("icmpcode without an icmptype: any ICMP, as CloudStack renders it".into());
                        }
                        None
                    }
                    (Some(t), None | Some(-1)) => Some((t as u8, None)),
                    (Some(t), Some(c)) => Some((t as u8, Some(c as u8))),
                };
            } else if ty.is_some_and(|t| t != -1) || code.is_some_and(|c| c != -1) {
                bad("icmptype", "ICMP type and code go with protocol icmp only".into());
            }
        }
        None => {}
    }
    // The rule must be able to match a family: a source of one family and a
    // destination of the other only never can.
    let fam = |v: &[IpNet], six: bool| v.is_empty() || v.iter().any(|n| matches!(n, IpNet::V6(_)) == six);
    let can_match = |six: bool| fam(&src, six) && fam(&dst, six);
    if !src.is_empty() && !can_match(false) && !can_match(true) {
        bad("destcidrlist", "no address family in common with cidrlist: the rule could never match".into());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let id = id.unwrap_or_else(|| format!("#{index}"));
    Ok(CsRule { id, protocol: protocol.unwrap_or("all"), src, dst, ports, icmp, notes })
}
