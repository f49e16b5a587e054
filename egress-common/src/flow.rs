//! The flow verdict cache: its slots (FLOW_V4, FLOW_V6), the hash that places
//! a flow and the seal that vouches for a slot, and the door in front of it
//! (the program's cache.rs and door.rs).

use core::mem::size_of;

/// The flow cache's door (the program's door.rs): 64-bit words of "seen
/// lately" bits in each of its four generations, per CPU (8 KiB, 65,536 bits
/// a generation; it reads two, which stay in the CPU's first-level cache).
pub const DOOR_WORDS: u32 = 2048;
/// Flows turned away by the door (on one CPU) that fill a generation: a flow
/// is remembered for 4,096 to 8,192 of them, and at most one bit in 8 of the
/// two generations the door reads is set.
pub const DOOR_GENERATION: u32 = 4096;

/// FLOW_V4 key: everything the verdict depends on, nothing more (the source port
/// never decides, so all connections of a client to one service share an entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// `PCLASS_*`, possibly or-ed with [`PCLASS_NO_L4`].
    pub pclass: u8,
    pub _pad: u8,
    /// TCP/UDP destination port (network byte order) or ICMP `[type, code]`.
    pub port: [u8; 2],
}
const _: () = assert!(size_of::<FlowKeyV4>() == 12);

/// FLOW_V6 key; see [`FlowKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKeyV6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub pclass: u8,
    pub _pad: u8,
    pub port: [u8; 2],
}
const _: () = assert!(size_of::<FlowKeyV6>() == 36);

/// FLOW_V4 / FLOW_V6 value part: a cached verdict.
///
/// The cache is a direct-mapped array shared by all CPUs, written without locks:
/// a lookup can race with another CPU overwriting the same slot and read a mix of
/// two entries. `seal` is [`flow_seal`] over the key and the other fields: a slot
/// read torn fails the check and counts as a miss.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Counter slot: 0 = default policy, i = rule i.
    pub rule: u32,
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`].
    pub action: u32,
    /// The rule-set generation the verdict was computed under (never 0, so an
    /// all-zero slot is empty).
    pub generation: u32,
    pub seal: u32,
}
const _: () = assert!(size_of::<FlowValue>() == 16);

/// Or-ed into [`FlowValue::action`]: the verdict depends on learned names
/// (rules by name). Such a slot is valid until its `deadline` and while its
/// learned bucket's epoch is the one it was computed under; both are in its
/// seal (`generation ^ flow_learned_tag(..)`).
pub const FLOW_LEARNED: u32 = 0x100;
/// A deadline's unit: 2^24 ns (16.8 ms) of CLOCK_MONOTONIC_COARSE, rounded down.
pub const FLOW_DEADLINE_SHIFT: u32 = 24;

/// The part of a learned-name verdict's seal that ties it to its learned
/// bucket's epoch and its deadline (never 0).
#[inline(always)]
pub fn flow_learned_tag(epoch: u64, deadline: u32) -> u32 {
    fmix32((epoch as u32).wrapping_mul(0x9e37_79b1) ^ deadline ^ ((epoch >> 32) as u32).wrapping_mul(0x85eb_ca77)) | 1
}

/// FLOW_V4 slot: key and cached verdict, 32 bytes (two to a cache line).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntryV4 {
    pub key: FlowKeyV4,
    pub value: FlowValue,
    /// A learned-name verdict's deadline ([`FLOW_LEARNED`]), else 0.
    pub deadline: u32,
}
const _: () = assert!(size_of::<FlowEntryV4>() == 32);

/// FLOW_V6 slot: key and cached verdict, one 64-byte cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntryV6 {
    pub key: FlowKeyV6,
    pub value: FlowValue,
    /// As [`FlowEntryV4::deadline`].
    pub deadline: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(size_of::<FlowEntryV6>() == 64);

/// The slot of a flow in FLOW_V4/FLOW_V6 before masking: a multiplicative hash of
/// the key's words. Both sides compute it the same way (the tests look entries up).
#[inline(always)]
pub fn flow_slot<const N: usize>(src: &[u8; N], dst: &[u8; N], pclass: u8, port: [u8; 2]) -> u32 {
    let mut h: u32 = 0x2545_f491;
    let mut i = 0;
    while i + 4 <= N {
        h = (h ^ u32::from_ne_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]])).wrapping_mul(0x9e37_79b1);
        h = (h ^ u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]])).wrapping_mul(0x85eb_ca77);
        i += 4;
    }
    h = (h ^ (u32::from(pclass) | u32::from(port[0]) << 8 | u32::from(port[1]) << 16)).wrapping_mul(0xc2b2_ae3d);
    h ^ (h >> 15)
}

/// murmur3's 32-bit finaliser: every input bit affects every output bit.
#[inline(always)]
pub(crate) const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The check word of a flow-cache entry: a hash of the key's addresses, class and
/// port and of the verdict fields (a weighted sum with distinct odd multipliers,
/// so swapped or shifted words do not cancel, then murmur3's finaliser). Both
/// sides compute it the same way; the program accepts a cached verdict only when
/// it matches.
#[inline(always)]
pub fn flow_seal<const N: usize>(src: &[u8; N], dst: &[u8; N], pclass: u8, port: [u8; 2], rule: u32, action: u32, generation: u32) -> u32 {
    const M: [u32; 8] = [0x9e37_79b1, 0x85eb_ca77, 0xc2b2_ae3d, 0x27d4_eb2f, 0x1656_67b1, 0xd3a2_646d, 0xfd70_46c5, 0xb55a_4f09];
    let mut h: u32 = 0;
    let mut i = 0;
    while i + 4 <= N {
        h = h.wrapping_add(u32::from_ne_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]).wrapping_mul(M[(i / 4) % 8]));
        h = h.wrapping_add(u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]).wrapping_mul(M[(i / 4 + 4) % 8] ^ 0x5555_5556));
        i += 4;
    }
    h = h.wrapping_add((u32::from(pclass) | u32::from(port[0]) << 8 | u32::from(port[1]) << 16).wrapping_mul(0x2545_f491));
    h = h.wrapping_add(rule.wrapping_mul(0x9e37_79b9)).wrapping_add(action.wrapping_mul(0x7f4a_7c15));
    fmix32(h ^ generation.wrapping_mul(0x6c8e_9cf5))
}
