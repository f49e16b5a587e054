//! Lint warnings about rules by name (`dst_fqdn`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Warning;
use crate::{
    reference::{self, L4, PacketMeta},
    rules::{Action, RuleSet},
};

/// `no-resolver`: every `[dns]` resolver's queries (UDP port 53, from any
/// source) are denied, so no answer can ever teach an address and the rules
/// by name never match.
pub(super) fn dns_warnings(rs: &RuleSet) -> Vec<Warning> {
    let Some(dns) = rs.dns.as_ref().filter(|_| rs.has_fqdn()) else { return Vec::new() };
    let reachable = dns.resolvers.iter().any(|&resolver| {
        let src = match resolver {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let q = PacketMeta { src, dst: resolver, proto: 17, l4: L4::Ports { dport: 53 } };
        let (slot, action) = reference::classify(rs, &q);
        // Audited denies pass.
        let audit = slot
            .checked_sub(1)
            .and_then(|i| rs.rules.get(i as usize))
            .map_or(rs.default_code() == egress_common::ACTION_AUDIT, |r| r.audit);
        action == Action::Allow || audit
    });
    if reachable {
        return Vec::new();
    }
    let res: Vec<String> = dns.resolvers.iter().map(|a| a.to_string()).collect();
    rs.rules
        .iter()
        .filter(|r| !r.fqdn.is_empty())
        .map(|r| Warning {
            line: r.line,
            rule: Some(r.name.clone()),
            kind: "no-resolver",
            message: format!(
                "rule '{}' names domains, but DNS queries to the resolvers ({}, udp port 53) are denied: no answer can teach an address, so it never matches; allow them in an earlier rule",
                r.name,
                res.join(", ")
            ),
        })
        .collect()
}
