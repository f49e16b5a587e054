//! A packet builder for BPF_PROG_TEST_RUN: Ethernet frames carrying IPv4 or IPv6,
//! with IPv4 options, IPv6 extension headers, fragments and truncation.

use std::net::IpAddr;

use crate::reference::{L4, PacketMeta};

/// How to build one frame around a [`PacketMeta`].
#[derive(Clone, Debug, Default)]
pub struct Shape {
    /// IPv4 options: number of 4-byte words beyond the 20-byte header (0..=10).
    pub ipv4_option_words: u8,
    /// IPv6 extension headers before the L4 header: next-header values from
    /// 0 (hop-by-hop), 43 (routing), 60 (destination options), 44 (fragment).
    pub ipv6_ext: Vec<u8>,
    /// Fragment offset in 8-byte units: non-zero makes a non-first fragment.
    /// For IPv6 a fragment header is added if `ipv6_ext` has none.
    pub frag_offset: u16,
    /// Set the more-fragments flag (first fragment when offset is 0).
    pub more_fragments: bool,
    /// Cut the frame to this many bytes.
    pub truncate: Option<usize>,
    /// 802.1Q tags in front of the EtherType.
    pub vlan_tags: u8,
    /// L4 payload bytes.
    pub payload: usize,
}

pub const ETH_HLEN: usize = 14;

/// Builds an Ethernet frame. With `L4::None` and a TCP/UDP/ICMP protocol and a zero
/// fragment offset, the L4 header is still written (zeros). Source and
/// destination of different families make no IP packet: the frame is empty
/// (callers check the families first; `explain` refuses them as usage errors).
pub fn build(p: &PacketMeta, shape: &Shape) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for _ in 0..shape.vlan_tags {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    let frag = shape.frag_offset != 0;
    let mut l4 = Vec::new();
    if !frag {
        match (p.proto, p.l4) {
            (6, L4::Ports { dport }) => {
                l4.extend_from_slice(&[0x30, 0x39]);
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&[0; 16]);
                l4[12] = 0x50;
            }
            (17, L4::Ports { dport }) => {
                l4.extend_from_slice(&[0x30, 0x39]);
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&[0; 4]);
            }
            (_, L4::Icmp { ty, code }) => l4.extend_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]),
            (6, _) => l4.extend_from_slice(&[0; 20]),
            (17 | 1 | 58, _) => l4.extend_from_slice(&[0; 8]),
            _ => {}
        }
    }
    l4.extend(std::iter::repeat_n(0xabu8, shape.payload));
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl = 5 + shape.ipv4_option_words as usize;
            let total = ihl * 4 + l4.len();
            let mut h = vec![0u8; ihl * 4];
            h[0] = 0x40 | ihl as u8;
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let fo = (shape.frag_offset & 0x1fff) | if shape.more_fragments { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            h[8] = 64;
            h[9] = p.proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            for b in h.iter_mut().skip(20) {
                *b = 1; // NOP options
            }
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut ext = shape.ipv6_ext.clone();
            if (frag || shape.more_fragments) && !ext.contains(&44) {
                ext.push(44);
            }
            let mut chain = Vec::new();
            for (i, &kind) in ext.iter().enumerate() {
                let next = ext.get(i + 1).copied().unwrap_or(p.proto);
                if kind == 44 {
                    let fo = (shape.frag_offset << 3) | shape.more_fragments as u16;
                    chain.extend_from_slice(&[next, 0]);
                    chain.extend_from_slice(&fo.to_be_bytes());
                    chain.extend_from_slice(&[0, 0, 0, 1]);
                } else {
                    // 16 bytes: hdr ext len 1 (units of 8 beyond the first 8), PadN.
                    chain.extend_from_slice(&[next, 1, 1, 12]);
                    chain.extend_from_slice(&[0; 12]);
                }
            }
            let first = ext.first().copied().unwrap_or(p.proto);
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
            h[6] = first;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&h);
            f.extend_from_slice(&chain);
        }
        _ => return Vec::new(),
    }
    f.extend_from_slice(&l4);
    if let Some(n) = shape.truncate {
        f.truncate(n);
    }
    f
}

/// An ARP request frame (non-IP).
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06];
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0; 20]);
    f
}
