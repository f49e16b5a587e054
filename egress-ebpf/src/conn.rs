//! Stateful mode: the connection table. A connection is keyed as the filtered
//! direction sees it (source = the side whose packets the rules judge). The
//! classifier looks a packet up before the rules: a tracked connection passes as
//! ESTABLISHED, an ICMP error quoting one as RELATED, neither charged to a rule.
//! A packet the rules allow opens an entry. The companion program (`egress_track`,
//! on the other direction of the interface) follows replies and opens entries for
//! connections started from the other side, so their answers pass too.
//!
//! The table is an LRU hash shared by every generation of the attachment (it is
//! pinned beside them), so connections outlive a reload. A full table evicts the
//! least recently used entry: a new connection is always classified and enforced,
//! never dropped for lack of space. Idle entries are removed when next seen.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use egress_common::{
    CONN_FIN_IN, CONN_FIN_OUT, CONN_INBOUND, CONN_REPLIED, CONN_RST, CS_ESTABLISHED_BYTES, CS_ESTABLISHED_PACKETS, CS_EXPIRED,
    CS_INSERT_FAILED, CS_INSERTED, CS_INSERTED_INBOUND, CS_RELATED_BYTES, CS_RELATED_PACKETS, ConnKeyV4, ConnKeyV6, ConnTimeout, ConnValue,
    PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_TCP, PCLASS_UDP, conn_closing, conn_timeout,
};

use crate::{
    frame::Frame,
    maps::{CONN_STATS, CONN_V4, CONN_V6},
    parse::Packet,
};

/// Load-time globals (set by user space): idle timeouts in nanoseconds.
#[unsafe(no_mangle)]
static TO_TCP_EST: u64 = 432_000_000_000_000;
#[unsafe(no_mangle)]
static TO_TCP_CLOSING: u64 = 120_000_000_000;
#[unsafe(no_mangle)]
static TO_UDP: u64 = 120_000_000_000;
#[unsafe(no_mangle)]
static TO_ICMP: u64 = 30_000_000_000;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// An entry's `last_seen` is rewritten at most this often (ns) unless its flags
/// change: a busy connection does not write its shared cache line every packet.
const TOUCH_NS: u64 = 1 << 26;

/// A connection's identity in one direction (IPv4 in the first 4 address bytes).
#[derive(Clone, Copy)]
pub struct Tuple {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    pclass: u8,
}

impl Tuple {
    /// The same connection seen from the other direction.
    #[inline(always)]
    fn reversed(&self) -> Tuple {
        let icmp = self.pclass == PCLASS_ICMP || self.pclass == PCLASS_ICMPV6;
        Tuple {
            v6: self.v6,
            src: self.dst,
            dst: self.src,
            // ICMP echo: both directions carry the identifier in `sport`.
            sport: if icmp { self.sport } else { self.dport },
            dport: if icmp { self.dport } else { self.sport },
            pclass: self.pclass,
        }
    }
}

#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

#[inline(always)]
fn get(t: &Tuple) -> Option<*mut ConnValue> {
    if t.v6 {
        let k = ConnKeyV6 { src: t.src, dst: t.dst, sport: t.sport, dport: t.dport, pclass: t.pclass, _pad: [0; 3] };
        CONN_V6.get_ptr_mut(&k)
    } else {
        let k = ConnKeyV4 { src: v4(&t.src), dst: v4(&t.dst), sport: t.sport, dport: t.dport, pclass: t.pclass, _pad: [0; 3] };
        CONN_V4.get_ptr_mut(&k)
    }
}

#[inline(always)]
fn insert(t: &Tuple, v: &ConnValue) -> Result<(), i32> {
    const BPF_NOEXIST: u64 = 1;
    if t.v6 {
        let k = ConnKeyV6 { src: t.src, dst: t.dst, sport: t.sport, dport: t.dport, pclass: t.pclass, _pad: [0; 3] };
        CONN_V6.insert(&k, v, BPF_NOEXIST)
    } else {
        let k = ConnKeyV4 { src: v4(&t.src), dst: v4(&t.dst), sport: t.sport, dport: t.dport, pclass: t.pclass, _pad: [0; 3] };
        CONN_V4.insert(&k, v, BPF_NOEXIST)
    }
}

#[inline(always)]
fn remove(t: &Tuple) {
    if t.v6 {
        let k = ConnKeyV6 { src: t.src, dst: t.dst, sport: t.sport, dport: t.dport, pclass: t.pclass, _pad: [0; 3] };
        let _ = CONN_V6.remove(&k);
    } else {
        let k = ConnKeyV4 { src: v4(&t.src), dst: v4(&t.dst), sport: t.sport, dport: t.dport, pclass: t.pclass, _pad: [0; 3] };
        let _ = CONN_V4.remove(&k);
    }
}

#[inline(always)]
fn bump(slot: u32, n: u64) {
    if let Some(c) = CONN_STATS.get_ptr_mut(slot) {
        unsafe { *c += n };
    }
}

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn global(g: &u64) -> u64 {
    // read_volatile: keep the loader-patched value instead of the compiled-in one.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn timeout(pclass: u8, flags: u32) -> u64 {
    match conn_timeout(pclass, flags) {
        ConnTimeout::TcpEstablished => global(&TO_TCP_EST),
        ConnTimeout::TcpClosing => global(&TO_TCP_CLOSING),
        ConnTimeout::Udp => global(&TO_UDP),
        ConnTimeout::Icmp => global(&TO_ICMP),
    }
}

#[inline(always)]
fn is_echo(pclass: u8, icmp_type: u8) -> bool {
    match pclass {
        PCLASS_ICMP => icmp_type == 8 || icmp_type == 0,
        PCLASS_ICMPV6 => icmp_type == 128 || icmp_type == 129,
        _ => false,
    }
}

#[inline(always)]
fn is_echo_request(pclass: u8, icmp_type: u8) -> bool {
    (pclass == PCLASS_ICMP && icmp_type == 8) || (pclass == PCLASS_ICMPV6 && icmp_type == 128)
}

/// The packet's connection tuple as it travels: TCP, UDP, ICMP echo. None for
/// anything else (other protocols, other ICMP types, non-first fragments).
#[inline(always)]
fn tuple(ctx: &impl Frame, pkt: &Packet) -> Option<Tuple> {
    let (sport, dport) = match pkt.pclass {
        PCLASS_TCP | PCLASS_UDP => (pkt.sport, pkt.port),
        PCLASS_ICMP | PCLASS_ICMPV6 if is_echo(pkt.pclass, pkt.port[0]) => (ctx.load::<[u8; 2]>(pkt.l4 as usize + 4).ok()?, [0; 2]),
        _ => return None,
    };
    Some(Tuple { v6: pkt.v6, src: pkt.src, dst: pkt.dst, sport, dport, pclass: pkt.pclass })
}

#[inline(always)]
fn tcp_flags(ctx: &impl Frame, pkt: &Packet) -> u8 {
    if pkt.pclass == PCLASS_TCP { ctx.load::<u8>(pkt.l4 as usize + 13).unwrap_or(0) } else { 0 }
}

/// What the table says about a packet in the filtered direction.
pub enum Seen {
    /// Part of a tracked connection: pass.
    Established,
    /// Classify it against the rules (and [`track_new`] it if they allow it).
    New,
    /// No connection tuple (other protocols, ICMP other than echo, non-first
    /// fragments): ask [`related`], else classify.
    Untracked,
}

/// Looks a packet of the filtered direction up (and updates its entry).
/// Not inlined (nor are the other entry points): a BPF-to-BPF call keeps the
/// stateful path's stack apart from the classifier's, which must stay small.
#[inline(never)]
pub fn filtered(ctx: &impl Frame, pkt: &Packet) -> Seen {
    let Some(t) = tuple(ctx, pkt) else {
        return Seen::Untracked;
    };
    let Some(p) = get(&t) else {
        return Seen::New;
    };
    let v = unsafe { &mut *p };
    let now = now();
    let tf = tcp_flags(ctx, pkt);
    let syn_only = tf & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if now.wrapping_sub(v.last_seen) > timeout(pkt.pclass, v.flags) || (syn_only && conn_closing(v.flags) && v.flags & CONN_INBOUND == 0) {
        // Idle past its timeout, or a new connection reusing a finished one's tuple.
        remove(&t);
        bump(CS_EXPIRED, 1);
        return Seen::New;
    }
    let mut flags = v.flags;
    if tf & TCP_FIN != 0 {
        flags |= CONN_FIN_OUT;
    }
    if tf & TCP_RST != 0 {
        flags |= CONN_RST;
    }
    if flags & CONN_INBOUND != 0 {
        flags |= CONN_REPLIED;
    }
    touch(v, flags, now);
    bump(CS_ESTABLISHED_PACKETS, ctx.packets());
    bump(CS_ESTABLISHED_BYTES, ctx.bytes());
    Seen::Established
}

/// Read-only [`filtered`] for `egress explain`: whether the packet belongs to a
/// live connection. Updates nothing (no timestamps, flags, removals or counters).
#[inline(never)]
pub fn peek(ctx: &impl Frame, pkt: &Packet) -> bool {
    let Some(t) = tuple(ctx, pkt) else {
        return false;
    };
    let Some(p) = get(&t) else {
        return false;
    };
    let v = unsafe { &*p };
    let syn_only = tcp_flags(ctx, pkt) & (TCP_SYN | TCP_ACK) == TCP_SYN;
    !(now().wrapping_sub(v.last_seen) > timeout(pkt.pclass, v.flags) || (syn_only && conn_closing(v.flags) && v.flags & CONN_INBOUND == 0))
}

#[inline(always)]
fn touch(v: &mut ConnValue, flags: u32, now: u64) {
    if flags != v.flags {
        v.flags = flags;
    }
    if now.wrapping_sub(v.last_seen) >= TOUCH_NS {
        v.last_seen = now;
    }
}

/// Opens an entry for a packet the rules allowed (`rule`: its counter slot).
#[inline(never)]
pub fn track_new(ctx: &impl Frame, pkt: &Packet, rule: u32) {
    let Some(t) = tuple(ctx, pkt) else {
        return;
    };
    let tf = tcp_flags(ctx, pkt);
    if tf & TCP_RST != 0 {
        return;
    }
    let flags = if tf & TCP_FIN != 0 { CONN_FIN_OUT } else { 0 };
    match insert(&t, &ConnValue { last_seen: now(), flags, rule }) {
        Ok(()) => bump(CS_INSERTED, 1),
        // EEXIST: another CPU inserted it first.
        Err(e) if e == -17 => {}
        Err(_) => bump(CS_INSERT_FAILED, 1),
    }
}

/// The companion's side: a packet travelling the other way. Follows replies of
/// tracked connections and opens entries for connections started from there.
#[inline(never)]
pub fn other_side(ctx: &impl Frame, pkt: &Packet) {
    let Some(seen) = tuple(ctx, pkt) else {
        return;
    };
    let t = seen.reversed();
    let now = now();
    let tf = tcp_flags(ctx, pkt);
    if let Some(p) = get(&t) {
        let v = unsafe { &mut *p };
        if now.wrapping_sub(v.last_seen) <= timeout(pkt.pclass, v.flags) {
            let mut flags = v.flags;
            if tf & TCP_FIN != 0 {
                flags |= CONN_FIN_IN;
            }
            if tf & TCP_RST != 0 {
                flags |= CONN_RST;
            }
            if flags & CONN_INBOUND == 0 {
                flags |= CONN_REPLIED;
            }
            touch(v, flags, now);
            return;
        }
        remove(&t);
        bump(CS_EXPIRED, 1);
    }
    let opens = match pkt.pclass {
        PCLASS_TCP => tf & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
        PCLASS_UDP => true,
        _ => is_echo_request(pkt.pclass, pkt.port[0]),
    };
    if opens {
        match insert(&t, &ConnValue { last_seen: now, flags: CONN_INBOUND, rule: 0 }) {
            Ok(()) => bump(CS_INSERTED_INBOUND, 1),
            Err(e) if e == -17 => {}
            Err(_) => bump(CS_INSERT_FAILED, 1),
        }
    }
}

/// Whether the packet is an ICMP error (destination unreachable, packet too big,
/// time exceeded, parameter problem) quoting a tracked connection; counts it if so.
#[inline(never)]
pub fn related(ctx: &impl Frame, pkt: &Packet) -> bool {
    if quotes_tracked(ctx, pkt) {
        bump(CS_RELATED_PACKETS, ctx.packets());
        bump(CS_RELATED_BYTES, ctx.bytes());
        return true;
    }
    false
}

#[inline(always)]
fn quotes_tracked(ctx: &impl Frame, pkt: &Packet) -> bool {
    let t = pkt.port[0];
    let error = match pkt.pclass {
        PCLASS_ICMP => t == 3 || t == 11 || t == 12,
        PCLASS_ICMPV6 => t == 1 || t == 2 || t == 3 || t == 4,
        _ => false,
    };
    if !error {
        return false;
    }
    // The quoted packet starts 8 bytes into the ICMP message.
    let inner = pkt.l4 as usize + 8;
    let Some(q) = quoted(ctx, inner, pkt.v6) else {
        return false;
    };
    // Usually an error about a packet the other side sent us (so the connection
    // is keyed the other way round); an error about our own packet also counts.
    live(&q.reversed()) || live(&q)
}

#[inline(always)]
fn live(t: &Tuple) -> bool {
    match get(t) {
        Some(p) => {
            let v = unsafe { &*p };
            now().wrapping_sub(v.last_seen) <= timeout(t.pclass, v.flags)
        }
        None => false,
    }
}

/// The tuple of the packet quoted in an ICMP error (IPv4 with options, or IPv6
/// without extension headers, followed by TCP/UDP ports or an ICMP echo id).
#[inline(always)]
fn quoted(ctx: &impl Frame, off: usize, v6: bool) -> Option<Tuple> {
    let mut t = Tuple { v6, src: [0; 16], dst: [0; 16], sport: [0; 2], dport: [0; 2], pclass: 0 };
    let (l4, proto) = if v6 {
        t.src = ctx.load(off + 8).ok()?;
        t.dst = ctx.load(off + 24).ok()?;
        (off + 40, ctx.load::<u8>(off + 6).ok()?)
    } else {
        let h: [u8; 20] = ctx.load(off).ok()?;
        t.src[..4].copy_from_slice(&h[12..16]);
        t.dst[..4].copy_from_slice(&h[16..20]);
        (off + ((h[0] & 0x0f) as usize) * 4, h[9])
    };
    let l: [u8; 6] = ctx.load(l4).ok()?;
    match (proto, v6) {
        (6, _) | (17, _) => {
            t.pclass = if proto == 6 { PCLASS_TCP } else { PCLASS_UDP };
            t.sport = [l[0], l[1]];
            t.dport = [l[2], l[3]];
        }
        (1, false) | (58, true) => {
            t.pclass = if v6 { PCLASS_ICMPV6 } else { PCLASS_ICMP };
            if !is_echo(t.pclass, l[0]) {
                return None;
            }
            t.sport = [l[4], l[5]];
        }
        _ => return None,
    }
    Some(t)
}
