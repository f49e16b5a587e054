//! The reference classifier: the plain first-match loop over the rules, written
//! to be obviously right. The differential tests hold the kernel program to it.

use std::net::IpAddr;

use crate::rules::{Action, Protocol, Rule, RuleSet};

/// What the classifier looks at in a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 protocol / IPv6 final next header.
    pub proto: u8,
    pub l4: L4,
}

/// The L4 fields a packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP or UDP with its destination port.
    Ports { dport: u16 },
    /// ICMP or ICMPv6 type and code.
    Icmp { ty: u8, code: u8 },
    /// Another protocol, or a non-first fragment (no L4 header in this packet).
    None,
}

/// First matching rule's (counter slot, action); the default policy (slot 0) if none.
pub fn classify(rs: &RuleSet, p: &PacketMeta) -> (u32, Action) {
    rs.rules.iter().find(|r| matches(r, p)).map(|r| (r.index, r.action)).unwrap_or((egress_common::DEFAULT_COUNTER_SLOT, rs.default_policy))
}

pub fn matches(r: &Rule, p: &PacketMeta) -> bool {
    let v6 = p.dst.is_ipv6();
    if v6 != p.src.is_ipv6() || !(if v6 { r.families.v6 } else { r.families.v4 }) {
        return false;
    }
    let within = |nets: &Option<Vec<ipnet::IpNet>>, a: IpAddr| match nets {
        None => true,
        Some(v) => v.iter().any(|n| n.contains(&a)),
    };
    if !within(&r.src, p.src) || !within(&r.dst, p.dst) {
        return false;
    }
    let proto_ok = match r.protocol {
        Protocol::All => true,
        Protocol::Tcp => p.proto == 6,
        Protocol::Udp => p.proto == 17,
        Protocol::Icmp => !v6 && p.proto == 1,
        Protocol::Icmpv6 => v6 && p.proto == 58,
    };
    if !proto_ok {
        return false;
    }
    if let Some((a, b)) = r.ports {
        match p.l4 {
            L4::Ports { dport } if a <= dport && dport <= b => {}
            _ => return false,
        }
    }
    if let Some(t) = r.icmp_type {
        match p.l4 {
            L4::Icmp { ty, code } if ty == t && r.icmp_code.is_none_or(|c| c == code) => {}
            _ => return false,
        }
    }
    true
}
