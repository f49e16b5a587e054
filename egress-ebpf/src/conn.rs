//! Stateful mode: the connection table. A connection is keyed as the filtered
//! direction sees it (source = the side whose packets the rules judge). The
//! classifier looks a packet up before the rules: a tracked connection passes as
//! ESTABLISHED, an ICMP error quoting one as RELATED, neither charged to a rule.
//! A packet the rules allow opens an entry. The companion program (`egress_track`,
//! on the other direction of the interface) follows replies and opens entries for
//! connections started from the other side, so their answers pass too.
//!
//! The table (egress-common's conn.rs) is shared by every generation of the
//! attachment (it is pinned beside them), so connections outlive a reload. A
//! connection lives in one bucket of `CONN_WAYS` slots, chosen by its hash:
//! a lookup reads that bucket only, and an insert takes an empty slot of it,
//! else one idle past its timeout, else the least recently seen connection's
//! (evicted): a new connection is always classified and enforced, never dropped
//! for lack of space. No locks, no lists: an LRU hash spent ~300 ns on a new
//! connection (a lookup miss, then an insert that evicts), this one bucket
//! read and one slot write. Idle entries are emptied when next seen.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, maps::Array};
use egress_common::{
    CONN_FIN_IN, CONN_FIN_OUT, CONN_INBOUND, CONN_REPLIED, CONN_RST, CONN_TIME_SHIFT, CONN_WAYS, CS_ESTABLISHED_BYTES,
    CS_ESTABLISHED_PACKETS, CS_EXPIRED, CS_INSERT_FAILED, CS_INSERTED, CS_INSERTED_INBOUND, CS_RELATED_BYTES, CS_RELATED_PACKETS,
    ConnBucket, ConnHead, ConnKey, ConnTimeout, DEFAULT_MAX_FLOWS, PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_TCP, PCLASS_UDP, conn_buckets,
    conn_closing, conn_place, conn_timeout,
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
/// Load-time global (set by user space): buckets in CONN_V4 and CONN_V6.
#[unsafe(no_mangle)]
static CONN_BUCKETS: u32 = conn_buckets(DEFAULT_MAX_FLOWS);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// A connection's time is rewritten at most this often (table time units, 67
/// ms) unless its flags change: a busy connection does not write its shared
/// cache line every packet.
const TOUCH: u32 = 64;

/// A connection's identity in one direction (IPv4 in the first 4 address bytes).
/// Aligned, addresses first: they are read a word at a time, not byte by byte.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Tuple {
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    pclass: u8,
    v6: bool,
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

/// An IPv4 address in place (the first four bytes; no copy, so it stays aligned).
#[inline(always)]
fn v4(a: &[u8; 16]) -> &[u8; 4] {
    a.first_chunk().unwrap_or(&[0; 4])
}

/// A tracked connection: its way `i` in a bucket's head (either family).
struct Entry {
    head: *mut ConnHead,
    i: usize,
}

impl Entry {
    #[inline(always)]
    fn head(&self) -> &mut ConnHead {
        unsafe { &mut *self.head }
    }

    #[inline(always)]
    fn flags(&self) -> u32 {
        u32::from(self.head().flags[self.i])
    }

    #[inline(always)]
    fn seen(&self) -> u32 {
        self.head().seen[self.i]
    }

    /// Empties the way.
    #[inline(always)]
    fn remove(&self) {
        unsafe { core::ptr::write_volatile(&mut self.head().tags[self.i], 0) };
    }

    /// New flags, and the time (rewritten at most every [`TOUCH`]: a busy
    /// connection does not write its shared cache line every packet).
    #[inline(always)]
    fn touch(&self, flags: u32, now: u32) {
        let h = self.head();
        if flags != u32::from(h.flags[self.i]) {
            h.flags[self.i] = flags as u8;
        }
        if now.wrapping_sub(h.seen[self.i]) >= TOUCH {
            h.seen[self.i] = now;
        }
    }
}

#[inline(always)]
fn holds<const N: usize>(k: &ConnKey<[u8; N]>, src: &[u8; N], dst: &[u8; N], t: &Tuple) -> bool {
    same(&k.src, src) && same(&k.dst, dst) && k.sport == t.sport && k.dport == t.dport && k.pclass == t.pclass
}

/// Two addresses compared a 32-bit word at a time (both sit 4-aligned: in a
/// bucket, or in a [`Tuple`]); `==` on byte arrays compiles to byte loads here.
#[inline(always)]
fn same<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut i = 0;
    while i + 4 <= N {
        // SAFETY: in bounds, and both arrays start 4-aligned (see above).
        let (x, y) = unsafe { (core::ptr::read(a.as_ptr().add(i).cast::<u32>()), core::ptr::read(b.as_ptr().add(i).cast::<u32>())) };
        if x != y {
            return false;
        }
        i += 4;
    }
    true
}

/// The tuple's bucket and tag.
#[inline(always)]
fn bucket<const N: usize>(map: &Array<ConnBucket<[u8; N]>>, src: &[u8; N], dst: &[u8; N], t: &Tuple) -> (*mut ConnBucket<[u8; N]>, u32) {
    let buckets = unsafe { core::ptr::read_volatile(&CONN_BUCKETS) };
    let (at, tag) = conn_place(src, dst, t.sport, t.dport, t.pclass, buckets);
    (map.get_ptr_mut(at).unwrap_or(core::ptr::null_mut()), tag)
}

/// The head of the bucket holding the tuple's connection (its way in `way`),
/// or null. A miss reads the head only.
#[inline(always)]
fn find<const N: usize>(map: &Array<ConnBucket<[u8; N]>>, src: &[u8; N], dst: &[u8; N], t: &Tuple, way: &mut u32) -> *mut ConnHead {
    let (b, tag) = bucket(map, src, dst, t);
    let Some(b) = (unsafe { b.as_mut() }) else {
        return core::ptr::null_mut();
    };
    for i in 0..CONN_WAYS {
        if b.head.tags[i] == tag && holds(&b.ways[i], src, dst, t) {
            *way = i as u32;
            return &mut b.head;
        }
    }
    core::ptr::null_mut()
}

// One BPF function per family and operation: each keeps its frame to itself
// (BPF's 512 bytes of stack are shared along every chain of calls).
#[inline(never)]
fn find_v4(t: &Tuple, way: &mut u32) -> *mut ConnHead {
    find(&CONN_V4, v4(&t.src), v4(&t.dst), t, way)
}

#[inline(never)]
fn find_v6(t: &Tuple, way: &mut u32) -> *mut ConnHead {
    find(&CONN_V6, &t.src, &t.dst, t, way)
}

#[inline(always)]
fn get(t: &Tuple) -> Option<Entry> {
    let mut way = 0u32;
    let head = if t.v6 { find_v6(t, &mut way) } else { find_v4(t, &mut way) };
    if head.is_null() {
        return None;
    }
    Some(Entry { head, i: (way as usize) & (CONN_WAYS - 1) })
}

/// A new connection's way and tag ([`room`] fills them in) and what goes there
/// (BPF functions take five arguments at most).
struct Spot {
    way: u32,
    tag: u32,
    flags: u32,
    rule: u32,
    now: u32,
}

/// The way of its bucket a new connection goes to: an empty one, else one
/// idle past its timeout, else the least recently seen connection's (evicted:
/// a new connection is always tracked). Decided from the bucket's head; null
/// when the bucket holds the connection already (another CPU was first).
#[inline(always)]
fn room<const N: usize>(
    map: &Array<ConnBucket<[u8; N]>>,
    src: &[u8; N],
    dst: &[u8; N],
    t: &Tuple,
    spot: &mut Spot,
) -> *mut ConnBucket<[u8; N]> {
    let now = spot.now;
    let (b, tag) = bucket(map, src, dst, t);
    let Some(b) = (unsafe { b.as_mut() }) else {
        bump(CS_INSERT_FAILED, 1);
        return core::ptr::null_mut();
    };
    // The best way to take: empty (rank MAX), idle (MAX - 1), else the oldest.
    let (mut best, mut rank) = (0, 0u64);
    for i in 0..CONN_WAYS {
        let h = &b.head;
        let r = if h.tags[i] == 0 {
            u64::MAX
        } else if h.tags[i] == tag && holds(&b.ways[i], src, dst, t) {
            return core::ptr::null_mut();
        } else {
            let age = idle(now, h.seen[i]);
            if age > timeout(h.pclass[i], u32::from(h.flags[i])) { u64::MAX - 1 } else { age }
        };
        if i == 0 || r > rank {
            (best, rank) = (i, r);
        }
    }
    if rank == u64::MAX - 1 {
        bump(CS_EXPIRED, 1);
    }
    (spot.way, spot.tag) = (best as u32, tag);
    b
}

/// Writes a connection into way `spot.way` of bucket `b`: emptied while
/// written, tagged last, so a reader on another CPU sees the old connection,
/// nothing, or the new one (a mix torn by two writers fails the tag).
#[inline(always)]
fn write<const N: usize>(b: &mut ConnBucket<[u8; N]>, spot: &Spot, src: &[u8; N], dst: &[u8; N], t: &Tuple) {
    let i = (spot.way as usize) & (CONN_WAYS - 1);
    unsafe {
        core::ptr::write_volatile(&mut b.head.tags[i], 0);
        let k = &mut b.ways[i];
        core::ptr::write_volatile(&mut k.src, *src);
        core::ptr::write_volatile(&mut k.dst, *dst);
        core::ptr::write_volatile(&mut k.sport, t.sport);
        core::ptr::write_volatile(&mut k.dport, t.dport);
        core::ptr::write_volatile(&mut k.pclass, t.pclass);
        core::ptr::write_volatile(&mut k.rule, spot.rule);
        core::ptr::write_volatile(&mut b.head.flags[i], spot.flags as u8);
        core::ptr::write_volatile(&mut b.head.pclass[i], t.pclass);
        core::ptr::write_volatile(&mut b.head.seen[i], spot.now);
        core::ptr::write_volatile(&mut b.head.tags[i], spot.tag);
    }
}

// Choosing the way and writing it are BPF functions of their own, per family
// (the stack they would need together is more than the chain of calls has).
#[inline(never)]
fn room_v4(t: &Tuple, spot: &mut Spot) -> *mut ConnBucket<[u8; 4]> {
    room(&CONN_V4, v4(&t.src), v4(&t.dst), t, spot)
}

#[inline(never)]
fn room_v6(t: &Tuple, spot: &mut Spot) -> *mut ConnBucket<[u8; 16]> {
    room(&CONN_V6, &t.src, &t.dst, t, spot)
}

#[inline(never)]
fn write_v4(b: *mut ConnBucket<[u8; 4]>, spot: &Spot, t: &Tuple) {
    if let Some(b) = unsafe { b.as_mut() } {
        write(b, spot, v4(&t.src), v4(&t.dst), t);
    }
}

#[inline(never)]
fn write_v6(b: *mut ConnBucket<[u8; 16]>, spot: &Spot, t: &Tuple) {
    if let Some(b) = unsafe { b.as_mut() } {
        write(b, spot, &t.src, &t.dst, t);
    }
}

/// Stores a new connection; false if another CPU stored it first.
#[inline(always)]
fn insert(t: &Tuple, flags: u32, rule: u32, now: u32) -> bool {
    let mut spot = Spot { way: 0, tag: 0, flags, rule, now };
    if t.v6 {
        let b = room_v6(t, &mut spot);
        write_v6(b, &spot, t);
        !b.is_null()
    } else {
        let b = room_v4(t, &mut spot);
        write_v4(b, &spot, t);
        !b.is_null()
    }
}

#[inline(always)]
fn bump(slot: u32, n: u64) {
    if let Some(c) = CONN_STATS.get_ptr_mut(slot) {
        unsafe { *c += n };
    }
}

/// The table's clock (CONN_TIME_SHIFT units of CLOCK_MONOTONIC_COARSE).
#[inline(always)]
fn now() -> u32 {
    (unsafe { bpf_ktime_get_coarse_ns() } >> CONN_TIME_SHIFT) as u32
}

/// How long (ns) a connection last seen at `seen` has been idle.
#[inline(always)]
fn idle(now: u32, seen: u32) -> u64 {
    u64::from(now.wrapping_sub(seen)) << CONN_TIME_SHIFT
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
    let Some(e) = get(&t) else {
        return Seen::New;
    };
    let now = now();
    let tf = tcp_flags(ctx, pkt);
    let syn_only = tf & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut flags = e.flags();
    if idle(now, e.seen()) > timeout(pkt.pclass, flags) || (syn_only && conn_closing(flags) && flags & CONN_INBOUND == 0) {
        // Idle past its timeout, or a new connection reusing a finished one's tuple.
        e.remove();
        bump(CS_EXPIRED, 1);
        return Seen::New;
    }
    if tf & TCP_FIN != 0 {
        flags |= CONN_FIN_OUT;
    }
    if tf & TCP_RST != 0 {
        flags |= CONN_RST;
    }
    if flags & CONN_INBOUND != 0 {
        flags |= CONN_REPLIED;
    }
    e.touch(flags, now);
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
    let Some(e) = get(&t) else {
        return false;
    };
    let (flags, syn_only) = (e.flags(), tcp_flags(ctx, pkt) & (TCP_SYN | TCP_ACK) == TCP_SYN);
    !(idle(now(), e.seen()) > timeout(pkt.pclass, flags) || (syn_only && conn_closing(flags) && flags & CONN_INBOUND == 0))
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
    if insert(&t, flags, rule, now()) {
        bump(CS_INSERTED, 1);
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
    if let Some(e) = get(&t) {
        let mut flags = e.flags();
        if idle(now, e.seen()) <= timeout(pkt.pclass, flags) {
            if tf & TCP_FIN != 0 {
                flags |= CONN_FIN_IN;
            }
            if tf & TCP_RST != 0 {
                flags |= CONN_RST;
            }
            if flags & CONN_INBOUND == 0 {
                flags |= CONN_REPLIED;
            }
            e.touch(flags, now);
            return;
        }
        e.remove();
        bump(CS_EXPIRED, 1);
    }
    let opens = match pkt.pclass {
        PCLASS_TCP => tf & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
        PCLASS_UDP => true,
        _ => is_echo_request(pkt.pclass, pkt.port[0]),
    };
    if opens {
        if insert(&t, CONN_INBOUND, 0, now) {
            bump(CS_INSERTED_INBOUND, 1);
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
        Some(e) => idle(now(), e.seen()) <= timeout(t.pclass, e.flags()),
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
