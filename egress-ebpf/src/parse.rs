//! Header parsing, in two paths that must agree:
//! - `fast`: the common shape (Ethernet without VLAN tags or raw IP; IPv4 without
//!   options and not a fragment, or IPv6 whose next header is TCP/UDP/ICMPv6;
//!   every needed byte in the linear data) read with direct packet access: a few
//!   bounds-checked loads instead of helper calls.
//! - the general path: every read goes through `bpf_skb_load_bytes` (TC) or
//!   `bpf_xdp_load_bytes` (XDP) (`Frame::load`),
//!   which checks bounds against the whole skb, including paged data, so a short
//!   packet is simply an `Err`. Anything the fast path does not take ends up here.

use crate::frame::Frame;
use egress_common::{MAX_IPV6_EXT_HDRS, MAX_VLAN_TAGS, PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_NO_L4, PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP};

const ETH_HLEN: usize = 14;
/// Offset of the EtherType inside the Ethernet header.
const ETH_TYPE_OFF: usize = 12;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
/// Fragment header length (fixed).
const IPV6_FRAG_HLEN: usize = 8;

pub enum ParseError {
    /// Not IPv4 or IPv6: the rules do not apply.
    NonIp,
    /// A header we need ends past the end of the packet.
    Truncated,
    /// A header field that cannot be right.
    BadHeader,
    /// More VLAN tags or IPv6 extension headers than we walk.
    TooManyHeaders,
}

/// What the classifier needs from a packet. IPv4 addresses sit in the first four
/// bytes of `src`/`dst`.
#[derive(Default)]
pub struct Packet {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// `PCLASS_*`, with `PCLASS_NO_L4` for a non-first fragment.
    pub pclass: u8,
    /// TCP/UDP destination port (network order) or ICMP `[type, code]`; zero otherwise.
    pub port: [u8; 2],
    /// TCP/UDP source port (network order); zero otherwise.
    pub sport: [u8; 2],
    /// Offset of the L4 header in the frame (meaningless for a non-first fragment).
    pub l4: u16,
}

#[inline(always)]
fn load<T>(ctx: &impl Frame, off: usize) -> Result<T, ParseError> {
    ctx.load::<T>(off).map_err(|_| ParseError::Truncated)
}

/// The fast path (see the module comment); `None` hands the packet to the general path.
#[inline(always)]
fn fast<C: Frame>(ctx: &C, has_eth: bool) -> Option<Packet> {
    let data = ctx.data();
    let end = ctx.data_end();
    let l3 = if has_eth {
        // EtherType at 12 (no VLAN tag), then IPv4's fixed header (the longer
        // IPv6 one is checked below).
        if data + ETH_HLEN + IPV4_MIN_HLEN > end {
            return None;
        }
        let et = unsafe { *((data + ETH_TYPE_OFF) as *const [u8; 2]) };
        match u16::from_be_bytes(et) {
            ETH_P_IP | ETH_P_IPV6 => {}
            _ => return None,
        }
        data + ETH_HLEN
    } else {
        if data + IPV4_MIN_HLEN > end {
            return None;
        }
        data
    };
    let first = unsafe { *(l3 as *const u8) };
    let mut pkt = Packet { v6: false, src: [0; 16], dst: [0; 16], pclass: 0, port: [0; 2], sport: [0; 2], l4: 0 };
    let (l4, proto) = match first {
        // Version 4, IHL 5 (no options). Fields are read in place (no copy of
        // the header onto the stack, whose 512 bytes the entry point shares).
        0x45 => {
            if has_eth && unsafe { *((data + ETH_TYPE_OFF) as *const [u8; 2]) } != ETH_P_IP.to_be_bytes() {
                return None;
            }
            // Fragments (offset or more-fragments) take the general path.
            let frag = unsafe { *((l3 + 6) as *const [u8; 2]) };
            if u16::from_be_bytes(frag) & (IPV4_OFFSET_MASK | 0x2000) != 0 {
                return None;
            }
            let sd = unsafe { *((l3 + 12) as *const [u8; 8]) };
            pkt.src[..4].copy_from_slice(&sd[..4]);
            pkt.dst[..4].copy_from_slice(&sd[4..]);
            (l3 + IPV4_MIN_HLEN, unsafe { *((l3 + 9) as *const u8) })
        }
        f if f >> 4 == 6 => {
            if l3 + IPV6_HLEN > end {
                return None;
            }
            if has_eth && unsafe { *((data + ETH_TYPE_OFF) as *const [u8; 2]) } != ETH_P_IPV6.to_be_bytes() {
                return None;
            }
            pkt.v6 = true;
            pkt.src = unsafe { *((l3 + 8) as *const [u8; 16]) };
            pkt.dst = unsafe { *((l3 + 24) as *const [u8; 16]) };
            (l3 + IPV6_HLEN, unsafe { *((l3 + 6) as *const u8) })
        }
        _ => return None,
    };
    match (proto, pkt.v6) {
        (IPPROTO_TCP | IPPROTO_UDP, _) => {
            if l4 + 4 > end {
                return None;
            }
            // Source port, then destination port.
            let p = unsafe { *(l4 as *const [u8; 4]) };
            pkt.pclass = if proto == IPPROTO_TCP { PCLASS_TCP } else { PCLASS_UDP };
            pkt.port = [p[2], p[3]];
            pkt.sport = [p[0], p[1]];
        }
        (IPPROTO_ICMP, false) | (IPPROTO_ICMPV6, true) => {
            if l4 + 2 > end {
                return None;
            }
            // Type, code.
            pkt.port = unsafe { *(l4 as *const [u8; 2]) };
            pkt.pclass = if pkt.v6 { PCLASS_ICMPV6 } else { PCLASS_ICMP };
        }
        // Extension headers, other protocols: the general path.
        _ => return None,
    }
    pkt.l4 = (l4 - data) as u16;
    Some(pkt)
}

/// Parses the frame into `pkt` (an out-parameter: one Packet on the entry
/// point's stack, not a returned copy beside it). `SPLIT` (the stateful
/// program): the general path runs in a BPF function of its own, so its header
/// copies stay out of the entry point's frame, which the lookup's and the
/// stateful path's frames add to (512 bytes in all). Without it everything is
/// inlined: no call on the stateless fast path.
#[inline(always)]
pub fn parse<C: Frame, const SPLIT: bool>(ctx: &C, has_eth: bool, pkt: &mut Packet) -> Result<(), ParseError> {
    if let Some(p) = fast(ctx, has_eth) {
        *pkt = p;
        return Ok(());
    }
    if !SPLIT {
        *pkt = general(ctx, has_eth)?;
        return Ok(());
    }
    match general_call(ctx, has_eth, pkt) {
        0 => Ok(()),
        1 => Err(ParseError::NonIp),
        2 => Err(ParseError::Truncated),
        3 => Err(ParseError::BadHeader),
        _ => Err(ParseError::TooManyHeaders),
    }
}

/// The general path as a BPF function. Its signature holds only plain types (a
/// pointer, a number): the BTF that rustc emits for a Rust enum with data (a
/// `Result`, an `Option`) in a function's signature is rejected by the kernel.
#[inline(never)]
fn general_call<C: Frame>(ctx: &C, has_eth: bool, pkt: &mut Packet) -> u32 {
    match general(ctx, has_eth) {
        Ok(p) => {
            *pkt = p;
            0
        }
        Err(ParseError::NonIp) => 1,
        Err(ParseError::Truncated) => 2,
        Err(ParseError::BadHeader) => 3,
        Err(ParseError::TooManyHeaders) => 4,
    }
}

/// The general path.
#[inline(always)]
fn general<C: Frame>(ctx: &C, has_eth: bool) -> Result<Packet, ParseError> {
    if !has_eth {
        // Raw-IP device (tun, WireGuard): the frame starts at the IP header.
        let first: u8 = load(ctx, 0)?;
        return match first >> 4 {
            4 => parse_ipv4(ctx, 0),
            6 => parse_ipv6(ctx, 0),
            _ => Err(ParseError::NonIp),
        };
    }
    let mut off = ETH_TYPE_OFF;
    let mut proto = u16::from_be_bytes(load::<[u8; 2]>(ctx, off)?);
    // In-band VLAN tags (offloaded tags live in skb metadata and never show up here).
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        off += VLAN_HLEN;
        proto = u16::from_be_bytes(load::<[u8; 2]>(ctx, off)?);
    }
    let l3 = off + 2;
    match proto {
        ETH_P_IP => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::TooManyHeaders),
        _ => Err(ParseError::NonIp),
    }
}

// ETH_HLEN documents the untagged layout: EtherType at 12, L3 at 14.
const _: () = assert!(ETH_TYPE_OFF + 2 == ETH_HLEN);

#[inline(always)]
fn parse_ipv4<C: Frame>(ctx: &C, l3: usize) -> Result<Packet, ParseError> {
    let h: [u8; IPV4_MIN_HLEN] = load(ctx, l3)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::BadHeader);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(ParseError::BadHeader);
    }
    let mut pkt = Packet { v6: false, src: [0; 16], dst: [0; 16], pclass: 0, port: [0; 2], sport: [0; 2], l4: 0 };
    pkt.src[..4].copy_from_slice(&h[12..16]);
    pkt.dst[..4].copy_from_slice(&h[16..20]);
    let proto = h[9];
    let pclass = match proto {
        IPPROTO_TCP => PCLASS_TCP,
        IPPROTO_UDP => PCLASS_UDP,
        IPPROTO_ICMP => PCLASS_ICMP,
        _ => PCLASS_OTHER,
    };
    // Options (IHL > 5) are skipped, never interpreted.
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & IPV4_OFFSET_MASK;
    if frag_off != 0 {
        pkt.pclass = pclass | PCLASS_NO_L4;
        return Ok(pkt);
    }
    pkt.pclass = pclass;
    (pkt.sport, pkt.port) = load_l4(ctx, l3 + ihl, pclass)?;
    pkt.l4 = (l3 + ihl) as u16;
    Ok(pkt)
}

#[inline(always)]
fn parse_ipv6<C: Frame>(ctx: &C, l3: usize) -> Result<Packet, ParseError> {
    let h: [u8; IPV6_HLEN] = load(ctx, l3)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::BadHeader);
    }
    let mut pkt = Packet { v6: true, src: [0; 16], dst: [0; 16], pclass: 0, port: [0; 2], sport: [0; 2], l4: 0 };
    pkt.src.copy_from_slice(&h[8..24]);
    pkt.dst.copy_from_slice(&h[24..40]);
    let mut nh = h[6];
    let mut off = l3 + IPV6_HLEN;
    let mut fragment = false;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HDRS {
        match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e: [u8; 2] = load(ctx, off)?;
                nh = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let e: [u8; 2] = load(ctx, off)?;
                nh = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e: [u8; 4] = load(ctx, off)?;
                nh = e[0];
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    fragment = true;
                }
                off += IPV6_FRAG_HLEN;
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    // Exactly MAX_IPV6_EXT_HDRS headers end the loop without reaching the L4 arm.
    if !done && matches!(nh, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT) {
        return Err(ParseError::TooManyHeaders);
    }
    let pclass = match nh {
        IPPROTO_TCP => PCLASS_TCP,
        IPPROTO_UDP => PCLASS_UDP,
        IPPROTO_ICMPV6 => PCLASS_ICMPV6,
        _ => PCLASS_OTHER,
    };
    if fragment {
        pkt.pclass = pclass | PCLASS_NO_L4;
        return Ok(pkt);
    }
    pkt.pclass = pclass;
    (pkt.sport, pkt.port) = load_l4(ctx, off, pclass)?;
    pkt.l4 = off as u16;
    Ok(pkt)
}

/// The source port and the 16-bit "port" of the last lookup stage for a first
/// (or only) fragment.
#[inline(always)]
fn load_l4<C: Frame>(ctx: &C, l4: usize, pclass: u8) -> Result<([u8; 2], [u8; 2]), ParseError> {
    match pclass {
        PCLASS_TCP | PCLASS_UDP => {
            // Source port, then destination port.
            let p: [u8; 4] = load(ctx, l4)?;
            Ok(([p[0], p[1]], [p[2], p[3]]))
        }
        PCLASS_ICMP | PCLASS_ICMPV6 => Ok(([0; 2], load(ctx, l4)?)),
        _ => Ok(([0; 2], [0; 2])),
    }
}
