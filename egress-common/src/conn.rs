//! Stateful mode's connection table (the program's conn.rs): its buckets and
//! slots, the hash that places a connection and the seal that vouches for a
//! slot; the `CONN_*` flags, the timeouts and the `CONN_STATS` slots.
//!
//! CONN_V4 / CONN_V6 are arrays of [`ConnBucket`]s, shared by all CPUs and
//! written with plain stores: a connection lives in one bucket (its hash), in
//! any of [`CONN_WAYS`] slots. A lookup reads one bucket (two cache lines for
//! IPv4, four for IPv6) and compares keys; a slot whose seal does not match its
//! contents (empty, or torn by two CPUs writing it at once) holds nothing.

use core::mem::size_of;

use crate::{PCLASS_TCP, PCLASS_UDP, flow_seal, flow_slot, fmix32};

/// Slots in a bucket of the connection table.
pub const CONN_WAYS: usize = 4;
/// Load-time global: buckets in CONN_V4 and in CONN_V6 ([`conn_buckets`]).
pub const GLOBAL_CONN_BUCKETS: &str = "CONN_BUCKETS";

/// One connection in the table, as the filtered direction sees it (the source
/// is the side whose packets the rules judge). Ports in network order; for ICMP
/// echo `sport` is the identifier and `dport` zero. `A` is `[u8; 4]` (IPv4,
/// 32 bytes) or `[u8; 16]` (IPv6, 64 bytes).
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSlot<A> {
    pub src: A,
    pub dst: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// `PCLASS_TCP`, `PCLASS_UDP`, `PCLASS_ICMP` or `PCLASS_ICMPV6`.
    pub pclass: u8,
    /// `CONN_*` bits (changed in place; not in the seal).
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Counter slot of the rule that allowed the first packet (0: the default
    /// policy, or a connection opened from the other side).
    pub rule: u32,
    /// [`conn_seal`] of the key and `rule`; 0: the slot is empty.
    pub seal: u32,
    /// CLOCK_MONOTONIC_COARSE (ns) of the last packet, either direction.
    pub last_seen: u64,
}
pub type ConnSlotV4 = ConnSlot<[u8; 4]>;
pub type ConnSlotV6 = ConnSlot<[u8; 16]>;
const _: () = assert!(size_of::<ConnSlotV4>() == 32);
const _: () = assert!(size_of::<ConnSlotV6>() == 64);

/// A CONN_V4 / CONN_V6 value: the slots one hash leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnBucket<A> {
    pub ways: [ConnSlot<A>; CONN_WAYS],
}
pub type ConnBucketV4 = ConnBucket<[u8; 4]>;
pub type ConnBucketV6 = ConnBucket<[u8; 16]>;

/// Buckets of a table holding `max_flows` connections per family.
pub const fn conn_buckets(max_flows: u32) -> u32 {
    max_flows.div_ceil(CONN_WAYS as u32)
}

/// The bucket of a connection: its hash scaled to `buckets` (any count).
#[inline(always)]
pub fn conn_bucket<const N: usize>(src: &[u8; N], dst: &[u8; N], sport: [u8; 2], dport: [u8; 2], pclass: u8, buckets: u32) -> u32 {
    let h = fmix32(flow_slot(src, dst, pclass, dport) ^ u32::from(u16::from_ne_bytes(sport)).wrapping_mul(0x27d4_eb2f));
    ((u64::from(h) * u64::from(buckets)) >> 32) as u32
}

/// The check word of a slot (never 0): its key and rule, as the flow cache's
/// seal weighs them. Both sides compute it the same way.
#[inline(always)]
pub fn conn_seal<const N: usize>(src: &[u8; N], dst: &[u8; N], sport: [u8; 2], dport: [u8; 2], pclass: u8, rule: u32) -> u32 {
    flow_seal(src, dst, pclass, dport, rule, u32::from(u16::from_ne_bytes(sport)), 0x636f_6e6e) | 1
}

impl<const N: usize> ConnSlot<[u8; N]> {
    /// Holds a connection: sealed, and its seal matches what it holds.
    #[inline(always)]
    pub fn sealed(&self) -> bool {
        self.seal != 0 && self.seal == conn_seal(&self.src, &self.dst, self.sport, self.dport, self.pclass, self.rule)
    }
}

/// The connection table of releases before the bucketed one: an LRU hash
/// (read only to carry its connections over). Key of CONN_V4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub pclass: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ConnKeyV4>() == 16);

/// The LRU table's CONN_V6 key; see [`ConnKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKeyV6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub pclass: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ConnKeyV6>() == 40);

/// The LRU table's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnValue {
    pub last_seen: u64,
    pub flags: u32,
    pub rule: u32,
}
const _: () = assert!(size_of::<ConnValue>() == 16);

/// Opened from the other side of the hook (the companion program saw its first packet).
pub const CONN_INBOUND: u32 = 1;
/// A packet in the answering direction has been seen.
pub const CONN_REPLIED: u32 = 2;
/// TCP FIN seen in the filtered direction.
pub const CONN_FIN_OUT: u32 = 4;
/// TCP FIN seen in the other direction.
pub const CONN_FIN_IN: u32 = 8;
/// TCP RST seen (either direction).
pub const CONN_RST: u32 = 16;

/// Whether a TCP connection is winding down (RST, FIN both ways) or was never
/// answered: it then lives for the closing timeout only, and a new SYN on its
/// tuple starts afresh.
#[inline(always)]
pub const fn conn_closing(flags: u32) -> bool {
    flags & CONN_RST != 0 || flags & (CONN_FIN_OUT | CONN_FIN_IN) == (CONN_FIN_OUT | CONN_FIN_IN) || flags & CONN_REPLIED == 0
}

/// Which idle timeout (`[state]` setting) applies to a connection-table entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnTimeout {
    TcpEstablished,
    TcpClosing,
    Udp,
    Icmp,
}

/// The idle timeout of an entry of protocol class `pclass` with `CONN_*` flags:
/// one decision for the program and for user space's count of live entries.
#[inline(always)]
pub const fn conn_timeout(pclass: u8, flags: u32) -> ConnTimeout {
    match pclass {
        PCLASS_TCP if conn_closing(flags) => ConnTimeout::TcpClosing,
        PCLASS_TCP => ConnTimeout::TcpEstablished,
        PCLASS_UDP => ConnTimeout::Udp,
        _ => ConnTimeout::Icmp,
    }
}

/// CONN_STATS slots (per CPU, u64 each).
/// Connections the rules allowed and the table now tracks.
pub const CS_INSERTED: u32 = 0;
/// Connections opened from the other side, tracked by the companion program.
pub const CS_INSERTED_INBOUND: u32 = 1;
/// Entries found idle past their timeout (emptied when next looked up, or
/// taken over by a new connection of their bucket).
pub const CS_EXPIRED: u32 = 2;
/// Packets (and bytes) passed as ESTABLISHED: part of a tracked connection.
pub const CS_ESTABLISHED_PACKETS: u32 = 3;
pub const CS_ESTABLISHED_BYTES: u32 = 4;
/// Packets (and bytes) passed as RELATED: ICMP errors quoting a tracked connection.
pub const CS_RELATED_PACKETS: u32 = 5;
pub const CS_RELATED_BYTES: u32 = 6;
/// Inserts that found no bucket (stays 0: a full bucket makes room by evicting
/// its least recently seen connection).
pub const CS_INSERT_FAILED: u32 = 7;
pub const CONN_STATS_LEN: u32 = 8;

/// Default idle timeouts, seconds (close to Linux conntrack's:
/// nf_conntrack_tcp_timeout_established 432000, ..._time_wait 120,
/// nf_conntrack_udp_timeout_stream 120, nf_conntrack_icmp_timeout 30).
pub const DEFAULT_TCP_ESTABLISHED_S: u64 = 432_000;
pub const DEFAULT_TCP_CLOSING_S: u64 = 120;
pub const DEFAULT_UDP_S: u64 = 120;
pub const DEFAULT_ICMP_S: u64 = 30;
/// Default connection-table size (entries per address family).
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Bounds of `max_flows` (the table is preallocated: 32 B an entry for IPv4,
/// 64 B for IPv6).
pub const MIN_MAX_FLOWS: u32 = 16;
pub const MAX_MAX_FLOWS: u32 = 1 << 22;
/// Longest idle timeout accepted, seconds (30 days).
pub const MAX_TIMEOUT_S: u64 = 30 * 86_400;
