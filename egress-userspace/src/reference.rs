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

/// As [`classify`], with the patterns the packet's destination is learned
/// for (rules by name match through them).
pub fn classify_learned(rs: &RuleSet, p: &PacketMeta, learned: &[&str]) -> (u32, Action) {
    rs.rules
        .iter()
        .find(
            |r| {
                if r.fqdn.is_empty() {
                    matches(r, p)
                } else {
                    r.fqdn.iter().any(|f| learned.contains(&f.as_str())) && matches_but_dst(r, p)
                }
            },
        )
        .map(|r| (r.index, r.action))
        .unwrap_or((egress_common::DEFAULT_COUNTER_SLOT, rs.default_policy))
}

pub fn matches(r: &Rule, p: &PacketMeta) -> bool {
    matches_but_dst(r, p) && r.dst.as_ref().is_none_or(|v| v.iter().any(|n| n.contains(&p.dst)))
}

/// Every field but the destination.
fn matches_but_dst(r: &Rule, p: &PacketMeta) -> bool {
    let v6 = p.dst.is_ipv6();
    if v6 != p.src.is_ipv6() || !(if v6 { r.families.v6 } else { r.families.v4 }) {
        return false;
    }
    let within = |nets: &Option<Vec<ipnet::IpNet>>, a: IpAddr| match nets {
        None => true,
        Some(v) => v.iter().any(|n| n.contains(&a)),
    };
    if !within(&r.src, p.src) {
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
    if let Some(ports) = &r.ports {
        match p.l4 {
            L4::Ports { dport } if ports.iter().any(|&(a, b)| a <= dport && dport <= b) => {}
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

/// What the reference parser makes of a frame (`parse_frame`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6: passes, the rules do not apply.
    NonIp,
    /// An IP packet that cannot be read (cut short, impossible header fields, too
    /// many VLAN tags or IPv6 extension headers): dropped.
    Unreadable,
    /// An IP packet, as the rules see it.
    Packet(PacketMeta),
}

/// Whether the classifier lets `frame` through (stateless): a non-IP frame
/// passes, an unreadable IP packet is dropped, an IP packet passes when the
/// first rule it matches (or the default policy) allows it or only audits.
pub fn frame_passes(rs: &RuleSet, frame: &[u8], has_eth: bool) -> bool {
    match parse_frame(frame, has_eth) {
        Parsed::NonIp => true,
        Parsed::Unreadable => false,
        Parsed::Packet(m) => {
            let (slot, action) = classify(rs, &m);
            let audit = match slot {
                0 => rs.default_code() == egress_common::ACTION_AUDIT,
                s => rs.rules.get(s as usize - 1).is_some_and(|r| r.audit),
            };
            action == Action::Allow || audit
        }
    }
}

const MAX_VLAN_TAGS: usize = egress_common::MAX_VLAN_TAGS as usize;
const MAX_IPV6_EXT_HDRS: usize = egress_common::MAX_IPV6_EXT_HDRS as usize;

/// The reference parser: the fail mode of ARCHITECTURE.md ("Verdicts and fail
/// mode") written plainly over a byte slice, for the packet fuzz target and the
/// tests, which hold the kernel's two parse paths to it. `has_eth`: frames
/// start with an Ethernet header (else raw IP).
pub fn parse_frame(f: &[u8], has_eth: bool) -> Parsed {
    let at = |off: usize, n: usize| f.get(off..off + n);
    let l3 = if has_eth {
        let mut off = 12;
        let mut et = match at(off, 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => return Parsed::Unreadable,
        };
        for _ in 0..MAX_VLAN_TAGS {
            if et != 0x8100 && et != 0x88a8 {
                break;
            }
            off += 4;
            et = match at(off, 2) {
                Some(b) => u16::from_be_bytes([b[0], b[1]]),
                None => return Parsed::Unreadable,
            };
        }
        match et {
            0x0800 => return ipv4(f, off + 2),
            0x86dd => return ipv6(f, off + 2),
            0x8100 | 0x88a8 => return Parsed::Unreadable,
            _ => return Parsed::NonIp,
        }
    } else {
        0
    };
    match f.first().map(|b| b >> 4) {
        None => Parsed::Unreadable,
        Some(4) => ipv4(f, l3),
        Some(6) => ipv6(f, l3),
        Some(_) => Parsed::NonIp,
    }
}

/// The L4 fields at `l4` for protocol `proto` (None: cut short).
fn l4_at(f: &[u8], l4: usize, proto: u8, icmp: u8) -> Option<L4> {
    match proto {
        6 | 17 => f.get(l4..l4 + 4).map(|p| L4::Ports { dport: u16::from_be_bytes([p[2], p[3]]) }),
        p if p == icmp => f.get(l4..l4 + 2).map(|p| L4::Icmp { ty: p[0], code: p[1] }),
        _ => Some(L4::None),
    }
}

fn ipv4(f: &[u8], l3: usize) -> Parsed {
    let Some(h) = f.get(l3..l3 + 20) else { return Parsed::Unreadable };
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Unreadable;
    }
    let src = IpAddr::from([h[12], h[13], h[14], h[15]]);
    let dst = IpAddr::from([h[16], h[17], h[18], h[19]]);
    let proto = h[9];
    // A non-first fragment carries no L4 header.
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return Parsed::Packet(PacketMeta { src, dst, proto, l4: L4::None });
    }
    match l4_at(f, l3 + ihl, proto, 1) {
        Some(l4) => Parsed::Packet(PacketMeta { src, dst, proto, l4 }),
        None => Parsed::Unreadable,
    }
}

fn ipv6(f: &[u8], l3: usize) -> Parsed {
    let Some(h) = f.get(l3..l3 + 40) else { return Parsed::Unreadable };
    if h[0] >> 4 != 6 {
        return Parsed::Unreadable;
    }
    let addr = |o: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[o..o + 16]);
        IpAddr::from(a)
    };
    let (src, dst) = (addr(8), addr(24));
    let (mut nh, mut off, mut fragment) = (h[6], l3 + 40, false);
    let is_ext = |nh: u8| matches!(nh, 0 | 43 | 44 | 51 | 60);
    let mut walked = 0;
    while is_ext(nh) {
        if walked == MAX_IPV6_EXT_HDRS {
            return Parsed::Unreadable;
        }
        walked += 1;
        let need = if nh == 44 { 4 } else { 2 };
        let Some(e) = f.get(off..off + need) else { return Parsed::Unreadable };
        match nh {
            // Fragment header: fixed 8 bytes; a non-zero offset means no L4 header.
            44 => {
                fragment |= u16::from_be_bytes([e[2], e[3]]) >> 3 != 0;
                off += 8;
            }
            // Authentication header: length in 4-byte units, minus 2.
            51 => off += (e[1] as usize + 2) * 4,
            _ => off += (e[1] as usize + 1) * 8,
        }
        nh = e[0];
    }
    if fragment {
        return Parsed::Packet(PacketMeta { src, dst, proto: nh, l4: L4::None });
    }
    match l4_at(f, off, nh, 58) {
        Some(l4) => Parsed::Packet(PacketMeta { src, dst, proto: nh, l4 }),
        None => Parsed::Unreadable,
    }
}
