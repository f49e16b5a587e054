//! Stateful mode's connection table (the program's conn.rs): its buckets, the
//! hash that places a connection and the tag that names it in its bucket; the
//! `CONN_*` flags, the timeouts and the `CONN_STATS` slots.
//!
//! CONN_V4 / CONN_V6 are arrays of [`ConnBucket`]s, shared by all CPUs and
//! written with plain stores: a connection lives in one bucket (its hash), in
//! any of its [`CONN_WAYS`] ways. A bucket's first cache line holds, per way,
//! the connection's tag, its last packet's time, flags and class: a lookup
//! that misses and the choice of a way for a new connection read that line
//! only; a key is read only where its tag matches. A way is empty when its tag
//! is 0; one torn by two CPUs writing it at once has a tag that does not match
//! its key, so it holds nothing.

use core::mem::size_of;

use crate::{PCLASS_TCP, PCLASS_UDP, flow_slot, fmix32};

/// Ways (connections) in a bucket of the connection table.
pub const CONN_WAYS: usize = 4;
/// Load-time global: buckets in CONN_V4 and in CONN_V6 ([`conn_buckets`]).
pub const GLOBAL_CONN_BUCKETS: &str = "CONN_BUCKETS";
/// The table's time unit: CLOCK_MONOTONIC_COARSE ns >> 20 (1.05 ms), kept in
/// 32 bits (they wrap after 52 days, longer than the longest timeout).
pub const CONN_TIME_SHIFT: u32 = 20;

/// A bucket's first 48 bytes: per way, all that deciding needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnHead {
    /// [`conn_place`]'s tag of each way's connection; 0: the way is empty.
    pub tags: [u32; CONN_WAYS],
    /// When each way's connection last saw a packet, either direction
    /// (CLOCK_MONOTONIC_COARSE >> [`CONN_TIME_SHIFT`]).
    pub seen: [u32; CONN_WAYS],
    /// `CONN_*` bits of each way's connection.
    pub flags: [u8; CONN_WAYS],
    /// `PCLASS_*` of each way's connection (its timeout depends on it).
    pub pclass: [u8; CONN_WAYS],
    pub _pad: [u8; 8],
}
const _: () = assert!(size_of::<ConnHead>() == 48);

/// One connection as the filtered direction sees it (the source is the side
/// whose packets the rules judge). Ports in network order; for ICMP echo
/// `sport` is the identifier and `dport` zero. `A` is `[u8; 4]` or `[u8; 16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnKey<A> {
    pub src: A,
    pub dst: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// `PCLASS_TCP`, `PCLASS_UDP`, `PCLASS_ICMP` or `PCLASS_ICMPV6`.
    pub pclass: u8,
    pub _pad: [u8; 3],
    /// Counter slot of the rule that allowed the first packet (0: the default
    /// policy, or a connection opened from the other side).
    pub rule: u32,
}
const _: () = assert!(size_of::<ConnKey<[u8; 4]>>() == 20);
const _: () = assert!(size_of::<ConnKey<[u8; 16]>>() == 44);

/// A CONN_V4 / CONN_V6 value: the ways one hash leads to (IPv4 128 bytes, two
/// cache lines; IPv6 256 bytes, four).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnBucket<A> {
    pub head: ConnHead,
    pub ways: [ConnKey<A>; CONN_WAYS],
}
pub type ConnBucketV4 = ConnBucket<[u8; 4]>;
pub type ConnBucketV6 = ConnBucket<[u8; 16]>;
const _: () = assert!(size_of::<ConnBucketV4>() == 128);
const _: () = assert!(size_of::<ConnBucketV6>() == 256);

/// Buckets of a table holding `max_flows` connections per family.
pub const fn conn_buckets(max_flows: u32) -> u32 {
    max_flows.div_ceil(CONN_WAYS as u32)
}

/// Where a connection goes: its bucket (its hash scaled to `buckets`, any
/// count) and its tag (other bits of the hash; never 0). Both sides compute it
/// the same way.
#[inline(always)]
pub fn conn_place<const N: usize>(src: &[u8; N], dst: &[u8; N], sport: [u8; 2], dport: [u8; 2], pclass: u8, buckets: u32) -> (u32, u32) {
    let h = fmix32(flow_slot(src, dst, pclass, dport) ^ u32::from(u16::from_ne_bytes(sport)).wrapping_mul(0x27d4_eb2f));
    (((u64::from(h) * u64::from(buckets)) >> 32) as u32, fmix32(h ^ 0x636f_6e6e) | 1)
}

impl<const N: usize> ConnBucket<[u8; N]> {
    /// Way `i` holds a connection: tagged, and its tag is its key's.
    pub fn holds(&self, i: usize) -> bool {
        let k = &self.ways[i];
        // (The tag does not depend on the table's size.)
        self.head.tags[i] != 0 && self.head.tags[i] == conn_place(&k.src, &k.dst, k.sport, k.dport, k.pclass, 1).1
    }
}

/// The connection table of releases before the bucketed one: an LRU hash
/// (read only to carry its connections over). Key of CONN_V4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LruKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub pclass: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<LruKeyV4>() == 16);

/// The LRU table's CONN_V6 key; see [`LruKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LruKeyV6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub pclass: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<LruKeyV6>() == 40);

/// The LRU table's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LruValue {
    pub last_seen: u64,
    pub flags: u32,
    pub rule: u32,
}
const _: () = assert!(size_of::<LruValue>() == 16);

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
