//! Types and constants shared by the egress TC classifier (kernel side) and the
//! `egress` binary (user side).
//!
//! Every map key and value is `#[repr(C)]`, has no implicit padding (explicit `_pad`
//! fields, always zero) and a size assertion beside it: padding bytes inside a
//! hash or LPM key make lookups miss at random. Addresses and ports are in
//! network byte order, exactly as they sit in the packet.
#![no_std]

use core::mem::size_of;

mod cgroup;
mod conn;
mod dns;
mod flat;
mod flow;
mod halves;
pub use cgroup::*;
pub use conn::*;
pub use dns::*;
pub use flat::*;
pub use flow::*;
pub use halves::*;

// ---------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------

/// Hand the packet on. Under tcx this is TCX_NEXT (-1): later programs in the chain
/// and the stack still see it; under a netlink clsact filter it is TC_ACT_UNSPEC.
pub const TC_ACT_UNSPEC: i32 = -1;
/// Drop the packet.
pub const TC_ACT_SHOT: i32 = 2;

/// Rule action "allow" as stored in [`Verdict::action`] and the `DEFAULT_ACTION` global.
pub const ACTION_ALLOW: u32 = 0;
/// Rule action "deny".
pub const ACTION_DENY: u32 = 1;
/// A deny in audit mode (`mode = "audit"`): counted (and reported) as the deny
/// it would be, but the packet passes. The program drops only [`ACTION_DENY`].
pub const ACTION_AUDIT: u32 = 2;

// ---------------------------------------------------------------------------
// Protocol classes: the protocol dimension of the last lookup stage
// ---------------------------------------------------------------------------

/// Any protocol that is not one of the classes below (GRE, ESP, SCTP, ...), and ICMP
/// carried in the other address family. Only `protocol = "all"` rules match it.
pub const PCLASS_OTHER: u8 = 0;
pub const PCLASS_TCP: u8 = 1;
pub const PCLASS_UDP: u8 = 2;
/// ICMP over IPv4 (protocol 1).
pub const PCLASS_ICMP: u8 = 3;
/// ICMPv6 over IPv6 (next header 58).
pub const PCLASS_ICMPV6: u8 = 4;
/// Or-ed into the class of a packet that carries no L4 header of its own (a non-first
/// fragment): such a packet only matches rules that constrain neither ports nor ICMP
/// type/code. LISTS holds, per (candidate list, class), the rule such a packet matches.
pub const PCLASS_NO_L4: u8 = 0x80;

// ---------------------------------------------------------------------------
// Map names and capacities
// ---------------------------------------------------------------------------

/// The classifier program's name in the ELF (the `#[classifier]` function).
pub const PROGRAM_NAME: &str = "egress_classify";
/// An empty classifier in the same object (returns TC_ACT_UNSPEC): the benchmark baseline.
pub const PASS_PROGRAM_NAME: &str = "egress_pass";
/// A classifier that drops everything: the benchmark's receive-side sink.
pub const SINK_PROGRAM_NAME: &str = "egress_sink";
/// The same classifier as an XDP program (`egress apply --hook xdp`).
pub const XDP_PROGRAM_NAME: &str = "egress_xdp";
/// The classifier of a stateful rule set (TC): the connection table is asked
/// before the rules. A program of its own, so that stateless rule sets keep a
/// program with no BPF-to-BPF call on the per-packet path.
pub const STATEFUL_PROGRAM_NAME: &str = "egress_classify_sf";
/// The stateful classifier as an XDP program.
pub const STATEFUL_XDP_PROGRAM_NAME: &str = "egress_xdp_sf";
/// The classifier entry point for a hook kind (TC or XDP), mode, and debug
/// mode (the `_dbg` twins log why they drop a packet they cannot parse, through
/// aya-log; programs of their own so that the others have no BPF-to-BPF call).
pub const fn classifier_program(xdp: bool, stateful: bool, debug: bool) -> &'static str {
    match (xdp, stateful, debug) {
        (false, false, false) => PROGRAM_NAME,
        (false, true, false) => STATEFUL_PROGRAM_NAME,
        (true, false, false) => XDP_PROGRAM_NAME,
        (true, true, false) => STATEFUL_XDP_PROGRAM_NAME,
        (false, false, true) => "egress_classify_dbg",
        (false, true, true) => "egress_classify_sf_dbg",
        (true, false, true) => "egress_xdp_dbg",
        (true, true, true) => "egress_xdp_sf_dbg",
    }
}
/// aya-log's ring buffer (the debug programs' log), pinned beside the events.
pub const MAP_DEBUG_LOG: &str = "AYA_LOGS";
/// `egress explain`'s program: the classifier's decision for a synthetic packet
/// (BPF_PROG_TEST_RUN), changing no state; returns `slot << 3 | established << 2
/// | action code`, or -1 when the packet cannot be parsed.
pub const EXPLAIN_PROGRAM_NAME: &str = "egress_explain";
/// An empty XDP program (returns XDP_PASS): the XDP benchmark baseline.
pub const XDP_PASS_PROGRAM_NAME: &str = "egress_xdp_pass";
/// The throughput benchmark's programs (egress-ebpf's bench.rs): an empty XDP
/// receiver that drops, and the generator (random IPv6 sources, XDP_TX).
pub const XDP_DROP_PROGRAM_NAME: &str = "egress_xdp_drop";
pub const GEN6_PROGRAM_NAME: &str = "egress_gen6";

pub const MAP_LISTS: &str = "LISTS";
pub const MAP_RANGES: &str = "RANGES";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_FLOW_V4: &str = "FLOW_V4";
pub const MAP_FLOW_V6: &str = "FLOW_V6";
/// The flow cache's door (not pinned: scratch of the programs that use it).
pub const MAP_DOOR: &str = "DOOR";
/// Every map of one rule-set generation (pinned per generation).
pub const ALL_MAPS: [&str; 17] = [
    MAP_DIR_V4,
    MAP_DIR_V6,
    MAP_SPAN_V4,
    MAP_SPAN_V6,
    MAP_DST_CLASSES,
    MAP_SDIR_V4,
    MAP_SDIR_V6,
    MAP_SSPAN_V4,
    MAP_SSPAN_V6,
    MAP_PAIR_LISTS,
    MAP_LISTS,
    MAP_RANGES,
    MAP_COUNTERS,
    MAP_STATS,
    MAP_FLOW_V4,
    MAP_FLOW_V6,
    MAP_EPOCH,
];
/// The connection table (stateful mode), shared by every generation of an
/// attachment and by its companion program; pinned beside the generations.
pub const MAP_CONN_V4: &str = "CONN_V4";
pub const MAP_CONN_V6: &str = "CONN_V6";
/// Connection-table counters (`CS_*` slots), shared like the table.
pub const MAP_CONN_STATS: &str = "CONN_STATS";
/// The stateful-mode maps, for the ELF check in the tests.
pub const CONN_MAPS: [&str; 3] = [MAP_CONN_V4, MAP_CONN_V6, MAP_CONN_STATS];
/// The companion program of stateful mode: watches the other direction of the
/// interface, creates entries for connections opened from that side and follows
/// the replies of ours. Never drops.
pub const TRACK_PROGRAM_NAME: &str = "egress_track";

/// Load-time global: the default policy, [`ACTION_ALLOW`] or [`ACTION_DENY`].
pub const GLOBAL_DEFAULT_ACTION: &str = "DEFAULT_ACTION";
/// Load-time global: 1 when frames start with an Ethernet header, 0 for raw-IP
/// devices (tun, WireGuard) whose frames start at the IP header.
pub const GLOBAL_HAS_ETH: &str = "HAS_ETH";
/// Load-time global: the rule-set generation (never 0) stamped into flow-cache
/// entries; an entry with another generation is a miss.
pub const GLOBAL_GENERATION: &str = "GENERATION";
/// Load-time globals: idle timeouts of the connection table, nanoseconds.
pub const GLOBAL_TO_TCP_EST: &str = "TO_TCP_EST";
pub const GLOBAL_TO_TCP_CLOSING: &str = "TO_TCP_CLOSING";
pub const GLOBAL_TO_UDP: &str = "TO_UDP";
pub const GLOBAL_TO_ICMP: &str = "TO_ICMP";
/// Load-time global: the flow cache's slot mask (slots - 1, slots a power of two),
/// or u32::MAX to classify every packet in full (`egress apply --flow-cache 0`).
pub const GLOBAL_FLOW_MASK: &str = "FLOW_MASK";

/// Most rules a rule file may hold (counter slots are 1..=MAX_RULES; slot 0 is the
/// default policy).
pub const MAX_RULES: u32 = 262_144;
/// Most distinct destination prefixes per family (the spans of SPAN_V4/SPAN_V6
/// are at most twice as many): room for a set of a million entries beside a
/// full rule file.
pub const MAX_DST_ENTRIES: u32 = 1 << 21;
/// Most (destination class, source prefix) pairs per family (stage 2).
pub const MAX_PAIR_ENTRIES: u32 = 1 << 21;
/// Most entries of RANGES (disjoint port intervals over all candidate lists and
/// protocol classes). LISTS and RANGES are arrays sized to the rule set at load.
pub const MAX_RANGES: u32 = 1 << 24;
/// Most entries of LISTS (candidate lists x [`PCLASS_COUNT`]).
pub const MAX_LIST_SLOTS: u32 = 1 << 24;
/// Default slots of FLOW_V4 and FLOW_V6 (per family, a power of two; 32 bytes a
/// slot for IPv4, 64 for IPv6, preallocated and shared by all CPUs).
pub const FLOW_CACHE_ENTRIES: u32 = 65_536;
/// Most slots per family (`--flow-cache` is capped here).
pub const MAX_FLOW_CACHE_ENTRIES: u32 = 1 << 24;
/// Counter slot of the default policy in COUNTERS; rule i (1-based, file order) uses slot i.
pub const DEFAULT_COUNTER_SLOT: u32 = 0;

/// Most IPv6 extension headers walked before the packet counts as malformed.
pub const MAX_IPV6_EXT_HDRS: u32 = 8;
/// Most 802.1Q/802.1ad tags walked before the packet counts as malformed.
pub const MAX_VLAN_TAGS: u32 = 2;

// ---------------------------------------------------------------------------
// Map keys and values
// ---------------------------------------------------------------------------

/// Two candidate lists (LISTS/RANGES) whose answers combine by first match: the rules
/// that name the destination prefix itself (`own`) and those inherited from
/// shorter, enclosing prefixes (`inherited`). Splitting them keeps a broad rule's
/// port intervals in one shared list instead of copying them into the list of
/// every specific destination beneath it (ARCHITECTURE.md, "Two probes").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lists {
    /// List id, [`NO_LIST`], or [`INLINE_LIST`] (the one own rule is `inline`).
    pub own: u32,
    /// List id, or [`NO_LIST`].
    pub inherited: u32,
    /// Lowest rule slot in `inherited` (u32::MAX when none): when `own` already
    /// yields an earlier rule, the second probe is skipped.
    pub inherited_first: u32,
    /// The own rule when `own` is [`INLINE_LIST`]; zero otherwise.
    pub inline: InlineRule,
}
const _: () = assert!(size_of::<Lists>() == 24);

/// A candidate list of exactly one rule, checked in the program instead of
/// through LISTS/RANGES (most destinations of a large rule set have one own rule,
/// saving a LISTS and a RANGES lookup on a cache miss).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InlineRule {
    /// Counter slot of the rule.
    pub rule: u32,
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`] (fits a byte).
    pub action: u8,
    /// Bit `1 << c` set for every protocol class `c` (`PCLASS_*`) the rule matches.
    pub classes: u8,
    /// 1 when the rule constrains no L4 field (so it matches non-first fragments).
    pub l4_any: u8,
    pub _pad: u8,
    /// Inclusive range of the 16-bit "port" (as in [`PortRange`]).
    pub lo: u16,
    pub hi: u16,
}
const _: () = assert!(size_of::<InlineRule>() == 12);

/// An empty candidate list: nothing to look up.
pub const NO_LIST: u32 = u32::MAX;
/// [`Lists::own`]: the own list is the single rule in [`Lists::inline`].
pub const INLINE_LIST: u32 = u32::MAX - 1;

/// DST_CLASSES value: what the destination lookup yields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DstValue {
    /// With [`DST_SRC_ANY`]: the candidate lists. Otherwise `lists.own`
    /// is the destination class: its entry in SDIR_V4/SDIR_V6.
    pub lists: Lists,
    /// [`DST_SRC_ANY`] or 0.
    pub flags: u32,
}
const _: () = assert!(size_of::<DstValue>() == 28);

/// Every rule that can match this destination class matches any source: skip the
/// source lookup (stage 2), `lists` are already the candidate lists.
pub const DST_SRC_ANY: u32 = 1;

/// Protocol classes (`PCLASS_*` without flags): LISTS has this many slots per list.
pub const PCLASS_COUNT: u32 = 5;

/// LISTS value, at index `list * PCLASS_COUNT + class`: where the list's port
/// intervals for that protocol class sit in RANGES, and the rule a packet without
/// an L4 header (a non-first fragment) matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListSlot {
    /// First RANGES index of the intervals (sorted, disjoint).
    pub start: u32,
    /// Number of intervals; 0: no rule of the list matches this class.
    pub count: u32,
    /// First rule of the list that matches this class without L4 fields; 0: none.
    pub no_l4_rule: u32,
    pub no_l4_action: u32,
}
const _: () = assert!(size_of::<ListSlot>() == 16);

/// RANGES value: an inclusive interval of the 16-bit "port" (TCP/UDP destination
/// port, or ICMP `type << 8 | code`; host order) and the first rule of the list
/// that matches there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    pub rule: u32,
    pub action: u32,
}
const _: () = assert!(size_of::<PortRange>() == 12);

/// Longest binary search over one list's intervals: a class holds at most 65,536
/// disjoint intervals, found in at most 17 halvings.
pub const RANGE_SEARCH_STEPS: u32 = 17;

/// A decision of the full lookup: the first rule that matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Counter slot of the rule (its 1-based position in the file).
    pub rule: u32,
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`].
    pub action: u32,
}
const _: () = assert!(size_of::<Verdict>() == 8);

// ---------------------------------------------------------------------------
// Deny events
// ---------------------------------------------------------------------------

/// The deny events' ring buffer, shared by every generation of an attachment
/// (pinned at `KEY/events/`), read by `egress events` and `egress run`.
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU event counters (`ES_*` slots), pinned beside [`MAP_EVENTS`].
pub const MAP_EVENT_STATS: &str = "EVENT_STATS";
/// Per-rule rate-limit state (slot = counter slot), per generation.
pub const MAP_EVENT_LIMITS: &str = "EVENT_LIMITS";
/// Size of the ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Load-time globals: the interval between a rule's events (1e9 / rate; 0: events
/// off) and the burst tolerance ((burst - 1) x interval), ns.
pub const GLOBAL_EVENT_INTERVAL: &str = "EVENT_INTERVAL";
pub const GLOBAL_EVENT_TOLERANCE: &str = "EVENT_TOLERANCE";
/// `[events]` defaults and limits.
pub const DEFAULT_EVENT_RATE: u32 = 10;
pub const DEFAULT_EVENT_BURST: u32 = 20;
pub const MAX_EVENT_RATE: u32 = 100_000;
pub const MAX_EVENT_BURST: u32 = 100_000;

/// EVENT_STATS slots: events written, events held back by a rule's rate limit,
/// events lost because the ring buffer was full (a reader too slow or absent).
pub const ES_SENT: u32 = 0;
pub const ES_SUPPRESSED: u32 = 1;
pub const ES_LOST: u32 = 2;
pub const EVENT_STATS_LEN: u32 = 3;

/// One rule's rate limit (GCRA: one "theoretical arrival time").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLimit {
    /// When the rule's next event is due (CLOCK_MONOTONIC_COARSE ns).
    pub tat: u64,
    /// Events held back since the rule's last event.
    pub suppressed: u64,
}
const _: () = assert!(size_of::<EventLimit>() == 16);

/// One denied packet, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    /// CLOCK_MONOTONIC_COARSE ns.
    pub time_ns: u64,
    /// Counter slot: the rule's 1-based position, 0 for the default policy.
    pub slot: u32,
    /// [`ACTION_DENY`] or [`ACTION_AUDIT`].
    pub action: u32,
    /// Frame length at the hook.
    pub len: u32,
    /// Events of this rule held back by the rate limit since its previous event.
    pub suppressed: u32,
    pub v6: u8,
    /// PCLASS_* (with PCLASS_NO_L4 for a non-first fragment).
    pub pclass: u8,
    /// TCP/UDP destination port or ICMP [type, code] (network order).
    pub port: [u8; 2],
    /// TCP/UDP source port (network order).
    pub sport: [u8; 2],
    pub _pad: [u8; 2],
    /// IPv4 addresses in the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<DenyEvent>() == 64);

/// Load-time global: COUNTERS' entries per CPU ([`counter_stride`]); CPU
/// `c`'s slots start at entry `c * stride`.
pub const GLOBAL_COUNTER_STRIDE: &str = "COUNTER_STRIDE";

/// COUNTERS' entries per CPU for `slots` counter slots (every half's). COUNTERS
/// is one flat array, a run of `stride` entries per possible CPU: a packet's
/// counter is one array read away (a per-CPU array reads a pointer first, then
/// the CPU's value: two cold cache lines a packet when many rules count). A
/// run is a whole number of 64-byte lines (8 entries of 24 bytes), so no two
/// CPUs write one line.
pub const fn counter_stride(slots: u32) -> u32 {
    slots.div_ceil(8) * 8
}

/// COUNTERS value (one per CPU and slot; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets, counting each GSO segment of a GSO packet.
    pub packets: u64,
    /// Bytes of the frames as seen at the hook (`skb->len`, L2 header included).
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) of this CPU's latest
    /// packet; 0: none yet. User space takes the latest over the CPUs.
    pub last: u64,
}
const _: () = assert!(size_of::<Counter>() == 24);

// ---------------------------------------------------------------------------
// STATS slots: packets the rules never saw (per CPU, u64 each)
// ---------------------------------------------------------------------------

/// Non-IP frames (ARP, LLDP, ...): passed, never counted against a rule.
pub const STAT_NON_IP: u32 = 0;
/// IP packets cut short inside a header we must read: dropped.
pub const STAT_TRUNCATED: u32 = 1;
/// IP headers that cannot be right (IPv4 IHL < 5, version mismatch): dropped.
pub const STAT_BAD_HEADER: u32 = 2;
/// IPv6 packets with more than [`MAX_IPV6_EXT_HDRS`] extension headers, or frames
/// with more than [`MAX_VLAN_TAGS`] VLAN tags: dropped.
pub const STAT_TOO_MANY_HDRS: u32 = 3;
/// Non-first fragments (classified without L4 fields; informational).
pub const STAT_FRAGMENTS: u32 = 4;
pub const STATS_LEN: u32 = 5;
/// Names of the STATS slots, index = slot.
pub const STAT_NAMES: [&str; STATS_LEN as usize] =
    ["non_ip_passed", "truncated_dropped", "bad_header_dropped", "too_many_headers_dropped", "non_first_fragments"];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for DstValue {}
    unsafe impl aya::Pod for Lists {}
    unsafe impl aya::Pod for InlineRule {}
    unsafe impl aya::Pod for ListSlot {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for Verdict {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FlowKeyV4 {}
    unsafe impl aya::Pod for FlowKeyV6 {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowEntryV4 {}
    unsafe impl aya::Pod for FlowEntryV6 {}
    unsafe impl aya::Pod for LruKeyV4 {}
    unsafe impl aya::Pod for LruKeyV6 {}
    unsafe impl aya::Pod for LruValue {}
    unsafe impl aya::Pod for ConnHead {}
    unsafe impl aya::Pod for ConnBucketV4 {}
    unsafe impl aya::Pod for ConnBucketV6 {}
    unsafe impl aya::Pod for EventLimit {}
    unsafe impl aya::Pod for DenyEvent {}
    unsafe impl aya::Pod for PatKey {}
    unsafe impl aya::Pod for PatValue {}
    unsafe impl aya::Pod for ResolverKey {}
    unsafe impl aya::Pod for LearnWay {}
    unsafe impl aya::Pod for LearnBucket {}
    unsafe impl aya::Pod for QueryKey {}
    unsafe impl aya::Pod for QueryValue {}
    unsafe impl aya::Pod for DnsName {}
    unsafe impl aya::Pod for DnsClass {}
    unsafe impl aya::Pod for DirEntry {}
    unsafe impl aya::Pod for SpanV4 {}
    unsafe impl aya::Pod for SpanV6 {}
}
