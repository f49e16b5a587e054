//! The rule sets the benchmark compares egress against, translated for
//! iptables-legacy (iptables-restore input) and nftables (one rule per line, and
//! a destination interval set as a lower bound). Pure text generation.

use egress::rules;

/// The rule's address entries of one family (`None`: any), for netfilter.
fn fam_nets(nets: &Option<Vec<ipnet::IpNet>>, v6: bool) -> Vec<Option<String>> {
    match nets {
        None => vec![None],
        Some(v) => v.iter().filter(|n| n.addr().is_ipv6() == v6).map(|n| Some(n.to_string())).collect(),
    }
}

/// A rule set as iptables-restore input for one family, one line per rule and
/// address combination, in file order.
pub fn iptables_restore(rs: &rules::RuleSet, v6: bool) -> String {
    use rules::{Action, Protocol};
    let verdict = |a: Action| if a == Action::Allow { "ACCEPT" } else { "DROP" };
    // The rules live in chain EGB; the benchmark switches them on and off with a
    // jump from OUTPUT. The default policy is EGB's last rule.
    let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:EGB - [0:0]\n");
    for r in &rs.rules {
        if !(if v6 { r.families.v6 } else { r.families.v4 }) {
            continue;
        }
        let mut m = String::new();
        match r.protocol {
            Protocol::All => {}
            Protocol::Tcp | Protocol::Udp => {
                let p = if r.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                m.push_str(&format!(" -p {p}"));
                match r.ports.as_deref() {
                    Some([(a, b)]) => m.push_str(&format!(" --dport {a}:{b}")),
                    // A port list: multiport (at most 15 ports, a range counting two).
                    Some(list) => {
                        let l: Vec<String> = list.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}:{b}") }).collect();
                        m.push_str(&format!(" -m multiport --dports {}", l.join(",")));
                    }
                    None => {}
                }
            }
            Protocol::Icmp | Protocol::Icmpv6 => {
                let (p, opt) = if v6 { ("ipv6-icmp", "--icmpv6-type") } else { ("icmp", "--icmp-type") };
                m.push_str(&format!(" -p {p}"));
                if let Some(t) = r.icmp_type {
                    m.push_str(&format!(" {opt} {t}"));
                    if let Some(c) = r.icmp_code {
                        m.push_str(&format!("/{c}"));
                    }
                }
            }
        }
        for src in fam_nets(&r.src, v6) {
            for dst in fam_nets(&r.dst, v6) {
                s.push_str("-A EGB");
                if let Some(x) = &src {
                    s.push_str(&format!(" -s {x}"));
                }
                if let Some(x) = &dst {
                    s.push_str(&format!(" -d {x}"));
                }
                s.push_str(&format!("{m} -j {}\n", verdict(r.action)));
            }
        }
    }
    s.push_str(&format!("-A EGB -j {}\nCOMMIT\n", verdict(rs.default_policy)));
    s
}

/// A rule set as an nftables inet output chain, one rule per line per family.
pub fn nft_linear(rs: &rules::RuleSet) -> String {
    use rules::{Action, Protocol};
    let verdict = |a: Action| if a == Action::Allow { "accept" } else { "drop" };
    // The rules live in chain `rules`; the benchmark switches them on and off with
    // a jump from the base chain `out`. The default policy is the last rule.
    let mut s = String::from(
        "table inet egressbench {\n  chain out {\n    type filter hook output priority 0; policy accept;\n  }\n  chain rules {\n",
    );
    for r in &rs.rules {
        for v6 in [false, true] {
            if !(if v6 { r.families.v6 } else { r.families.v4 }) {
                continue;
            }
            let fam = if v6 { "ip6" } else { "ip" };
            let set = |nets: &Option<Vec<ipnet::IpNet>>| -> Option<String> {
                let v: Vec<String> = fam_nets(nets, v6).into_iter().flatten().collect();
                if v.is_empty() { None } else { Some(format!("{{ {} }}", v.join(", "))) }
            };
            let mut line = format!("    meta nfproto {}", if v6 { "ipv6" } else { "ipv4" });
            if let Some(x) = set(&r.src) {
                line.push_str(&format!(" {fam} saddr {x}"));
            }
            if let Some(x) = set(&r.dst) {
                line.push_str(&format!(" {fam} daddr {x}"));
            }
            match r.protocol {
                Protocol::All => {}
                Protocol::Tcp | Protocol::Udp => {
                    let p = if r.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                    match r.ports.as_deref() {
                        Some([(a, b)]) if a == b => line.push_str(&format!(" {p} dport {a}")),
                        Some([(a, b)]) => line.push_str(&format!(" {p} dport {a}-{b}")),
                        Some(list) => {
                            let l: Vec<String> =
                                list.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
                            line.push_str(&format!(" {p} dport {{ {} }}", l.join(", ")));
                        }
                        None => line.push_str(&format!(" meta l4proto {p}")),
                    }
                }
                Protocol::Icmp | Protocol::Icmpv6 => {
                    let p = if v6 { "icmpv6" } else { "icmp" };
                    match r.icmp_type {
                        Some(t) => {
                            line.push_str(&format!(" {p} type {t}"));
                            if let Some(c) = r.icmp_code {
                                line.push_str(&format!(" {p} code {c}"));
                            }
                        }
                        None => line.push_str(&format!(" meta l4proto {}", if v6 { "ipv6-icmp" } else { "icmp" })),
                    }
                }
            }
            s.push_str(&format!("{line} {}\n", verdict(r.action)));
        }
    }
    s.push_str(&format!("    {}\n  }}\n}}\n", verdict(rs.default_policy)));
    s
}

/// The rule set's destinations as one nftables interval set per family, matched
/// with one lookup: the least any nftables set form must do per packet, so a lower
/// bound on the cost of the best nftables translation. (A first-match rule set
/// cannot be written as one concatenated interval map directly: nftables rejects
/// overlapping elements with "File exists", so the overlaps would first have to be
/// resolved by a compiler such as egress's.)
pub fn nft_set(rs: &rules::RuleSet) -> String {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for r in &rs.rules {
        for net in r.dst.iter().flatten() {
            if net.addr().is_ipv6() { v6.push(net.to_string()) } else { v4.push(net.to_string()) }
        }
    }
    let set = |name: &str, ty: &str, elems: &[String]| {
        if elems.is_empty() {
            format!("  set {name} {{ type {ty}; flags interval; }}\n")
        } else {
            format!("  set {name} {{\n    type {ty}; flags interval; auto-merge;\n    elements = {{ {} }}\n  }}\n", elems.join(", "))
        }
    };
    let policy = if rs.default_policy == rules::Action::Allow { "accept" } else { "drop" };
    format!(
        "table inet egressbench {{\n{}{}  chain out {{\n    type filter hook output priority 0; policy accept;\n  }}\n  chain rules {{\n    ip daddr @d4 accept\n    ip6 daddr @d6 accept\n    {policy}\n  }}\n}}\n",
        set("d4", "ipv4_addr", &v4),
        set("d6", "ipv6_addr", &v6)
    )
}
