//! The rule file an import writes: commented TOML, each rule named after its
//! CloudStack id, the CloudStack rule it came from in a comment above it.

use std::fmt::Write as _;

use ipnet::IpNet;

use super::{CsRule, Options, Problem};
use crate::rules::{Action, MAX_NAME_LEN};

/// One comment line. Text from the input (ids, states, file names) may hold
/// line breaks or other control characters, which would end the comment (and
/// TOML allows none but tab in one): each becomes '?'.
fn comment(s: &mut String, text: &str) {
    s.push_str("# ");
    s.extend(text.chars().map(|c| if c.is_control() && c != '\t' { '?' } else { c }));
    s.push('\n');
}

/// "allows" / "denies".
pub fn verb(a: Action) -> &'static str {
    match a {
        Action::Allow => "allows",
        Action::Deny => "denies",
    }
}

/// A rule name from a CloudStack id: `cs-ID` (shortened to fit), unique.
fn name_for(id: &str, used: &mut std::collections::HashSet<String>) -> String {
    let clean: String = id.chars().map(|c| if c.is_control() || c == '"' || c == '\\' { '_' } else { c }).collect();
    let mut base = format!("cs-{clean}");
    while base.len() > MAX_NAME_LEN - 6 {
        base.pop();
    }
    let mut name = base.clone();
    let mut k = 2;
    while !used.insert(name.clone()) {
        name = format!("{base}-{k}");
        k += 1;
    }
    name
}

fn list(v: &[IpNet]) -> String {
    let items: Vec<String> = v.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// The rules as written: one each, or (`merge`) the rules with ports that
/// share protocol, sources and destinations together, in the order of each
/// group's first rule.
fn groups(rules: &[CsRule], merge: bool) -> Vec<Vec<&CsRule>> {
    let mut out: Vec<Vec<&CsRule>> = Vec::new();
    for r in rules {
        let same = |g: &Vec<&CsRule>| {
            let f = g[0];
            f.ports.is_some() && r.ports.is_some() && f.protocol == r.protocol && f.src == r.src && f.dst == r.dst
        };
        match out.iter_mut().find(|g| merge && same(g)) {
            Some(g) => g.push(r),
            None => out.push(vec![r]),
        }
    }
    out
}

pub(super) fn write(
    file: &str,
    policy: Action,
    policy_from: &str,
    rules: &[CsRule],
    inactive: &[(String, String)],
    skipped: &[Problem],
    o: &Options,
) -> String {
    let action = policy.opposite();
    let mut s = String::new();
    comment(&mut s, &format!("Imported from CloudStack egress firewall rules ({file}) by `egress import cloudstack`."));
    if let Some(n) = &o.network {
        comment(&mut s, &format!("Network {n} only."));
    }
    comment(
        &mut s,
        &format!(
            "Default egress policy {} (from {policy_from}): as in CloudStack, every rule {} what it matches.",
            policy.as_str(),
            verb(action)
        ),
    );
    comment(&mut s, &format!("{} rules in the API's order (they share one verdict, so order changes nothing).", rules.len()));
    if !inactive.is_empty() {
        let items: Vec<String> = inactive.iter().map(|(id, st)| format!("{id} ({st})")).collect();
        comment(&mut s, &format!("Not imported, state not Active: {}.", items.join(", ")));
    }
    for p in skipped {
        comment(&mut s, &format!("Skipped (invalid): {p}."));
    }
    let _ = writeln!(s, "default_policy = \"{}\"", policy.as_str());
    let mut used = std::collections::HashSet::new();
    for group in groups(rules, o.merge_ports) {
        let r = group[0];
        let ports: Option<Vec<(u16, u16)>> =
            r.ports.as_ref().map(|_| crate::rules::merge_intervals(group.iter().flat_map(|g| g.ports.iter().flatten().copied()).collect()));
        let mut what = r.protocol.to_string();
        if let Some(p) = &ports {
            let many = p.len() > 1 || p[0].0 != p[0].1;
            what += &format!(" port{} {}", if many { "s" } else { "" }, crate::rules::ports_text(p));
        }
        if let Some((t, c)) = r.icmp {
            what += &format!(" type {t}{}", c.map(|c| format!(" code {c}")).unwrap_or_default());
        }
        let to = if r.dst.is_empty() { "any".to_string() } else { r.dst.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",") };
        let from = r.src.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        s.push('\n');
        let ids: Vec<&str> = group.iter().map(|g| g.id.as_str()).collect();
        let which = if ids.len() == 1 { format!("rule {}", ids[0]) } else { format!("rules {} (merged: --merge-ports)", ids.join(", ")) };
        comment(&mut s, &format!("CloudStack {which}: {what} from {from} to {to}"));
        for n in group.iter().flat_map(|g| &g.notes) {
            comment(&mut s, &format!("({n})"));
        }
        let _ = writeln!(s, "[[rule]]\nname = \"{}\"\naction = \"{}\"", name_for(&r.id, &mut used), action.as_str());
        let _ = writeln!(s, "src = {}", list(&r.src));
        if !r.dst.is_empty() {
            let _ = writeln!(s, "dst = {}", list(&r.dst));
        }
        let _ = writeln!(s, "protocol = \"{}\"", r.protocol);
        match ports.as_deref() {
            Some([(a, b)]) => {
                let _ = writeln!(s, "ports = \"{}\"", if a == b { a.to_string() } else { format!("{a}-{b}") });
            }
            Some(p) => {
                let items: Vec<String> = p.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("\"{a}-{b}\"") }).collect();
                let _ = writeln!(s, "ports = [{}]", items.join(", "));
            }
            None => {}
        }
        if let Some((t, c)) = r.icmp {
            let _ = writeln!(s, "icmp_type = {t}");
            if let Some(c) = c {
                let _ = writeln!(s, "icmp_code = {c}");
            }
        }
    }
    s
}
