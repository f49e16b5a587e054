//! The maps of the classifier. Names are the kernel's map names (<= 15 bytes) and
//! must equal the `MAP_*` consts in egress-common; capacities come from there too.
//! The compiler in egress-userspace (`compile.rs`) writes every lookup map before
//! the program is attached; the program only reads them and writes counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use egress_common::{
    CG_MAX_OWNERS, DNS_MAX_RESOLVERS, DNS_QUERY_ENTRIES, DNS_STATS_LEN, DnsClass, DnsName, LearnBucket, PatKey, PatValue, QueryKey,
    QueryValue, ResolverKey,
};
use egress_common::{
    CONN_STATS_LEN, ConnBucketV4, ConnBucketV6, Counter, DEFAULT_MAX_FLOWS, DirEntry, DstValue, EVENT_STATS_LEN, EVENTS_RING_BYTES,
    EventLimit, FLOW_CACHE_ENTRIES, FlowEntryV4, FlowEntryV6, ListSlot, Lists, MAX_LIST_SLOTS, MAX_RANGES, MAX_RULES, PortRange, STATS_LEN,
    SpanV4, SpanV6, conn_buckets,
};

/// BPF_F_MMAPABLE: user space writes the rule maps (and flips EPOCH) through
/// a memory mapping, at memory speed (egress-userspace's dataplane/mmap.rs).
/// The program reads them as any array.
const MMAPABLE: u32 = 1 << 10;

/// Stage 1, IPv4 (egress-common's flat.rs): the root table (top 16 address
/// bits), then chunks of 256 entries (one per next address byte). Sized to the
/// rule set at load; written by user space.
#[map]
pub static DIR_V4: Array<DirEntry> = Array::with_max_entries(1, MMAPABLE);

/// Stage 1, IPv6; as [`DIR_V4`].
#[map]
pub static DIR_V6: Array<DirEntry> = Array::with_max_entries(1, MMAPABLE);

/// Stage 1's buckets, IPv4: sorted runs of address spans, each with its
/// destination class. Sized at load; written by user space.
#[map]
pub static SPAN_V4: Array<SpanV4> = Array::with_max_entries(1, MMAPABLE);

/// Stage 1's buckets, IPv6; as [`SPAN_V4`].
#[map]
pub static SPAN_V6: Array<SpanV6> = Array::with_max_entries(1, MMAPABLE);

/// Stage 1's answers, both families: per destination class, the candidate
/// lists (or the PAIR class). Index 0: no class. Sized at load.
#[map]
pub static DST_CLASSES: Array<DstValue> = Array::with_max_entries(1, MMAPABLE);

/// Stage 2, IPv4 (egress-common's flat.rs): one entry per destination class
/// (its whole source space), then chunks of 256 entries. Sized at load.
#[map]
pub static SDIR_V4: Array<DirEntry> = Array::with_max_entries(1, MMAPABLE);

/// Stage 2, IPv6; as [`SDIR_V4`].
#[map]
pub static SDIR_V6: Array<DirEntry> = Array::with_max_entries(1, MMAPABLE);

/// Stage 2's buckets, IPv4: source spans, each with its PAIR_LISTS index.
#[map]
pub static SSPAN_V4: Array<SpanV4> = Array::with_max_entries(1, MMAPABLE);

/// Stage 2's buckets, IPv6; as [`SSPAN_V4`].
#[map]
pub static SSPAN_V6: Array<SpanV6> = Array::with_max_entries(1, MMAPABLE);

/// Stage 2's answers, both families: the candidate lists for a (class,
/// source) pair: the rules, in file order, whose destination and source both
/// contain the packet's, split into the destination's own and inherited ones.
/// Index 0: none. Sized at load.
#[map]
pub static PAIR_LISTS: Array<Lists> = Array::with_max_entries(1, MMAPABLE);

/// Stage 3, index. At `list * PCLASS_COUNT + class`: the slice of RANGES holding
/// that candidate list's port intervals for that protocol class, and the rule a
/// non-first fragment matches. Sized to the rule set at load; written by user space.
#[map]
pub static LISTS: Array<ListSlot> = Array::with_max_entries(MAX_LIST_SLOTS, MMAPABLE);

/// Stage 3, intervals: per (list, class) a sorted run of disjoint port intervals,
/// each with the first rule of the list that matches there (first match resolved
/// by the compiler). Binary-searched. Sized at load; written by user space.
#[map]
pub static RANGES: Array<PortRange> = Array::with_max_entries(MAX_RANGES, MMAPABLE);

/// Which half of the rule maps is live (epoch.rs; egress-common's halves.rs).
/// Written by user space, read once per packet.
#[map]
pub static EPOCH: Array<u32> = Array::with_max_entries(1, MMAPABLE);

/// Per-rule counters, a run of slots per CPU (egress-common's `counter_stride`):
/// entry `cpu * stride + slot`, slot 0 = default policy, i = rule i (file order).
/// Written by the program; read (and summed over CPUs) by `egress counters`. User
/// space sizes it to the possible CPUs times the stride at load.
#[map]
pub static COUNTERS: Array<Counter> = Array::with_max_entries(MAX_RULES + 1, MMAPABLE);

/// Packets the rules never saw, per CPU, indexed by the `STAT_*` consts. Written by
/// the program; read by `egress counters`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// The flow verdict cache, IPv4 (cache.rs): a direct-mapped array of slots,
/// shared by all CPUs. User space sets the slot count at load (`--flow-cache`).
/// Written by the program. Memory-mappable for its alignment only: such an
/// array's values start on a page, so an IPv6 slot is exactly one cache line
/// and an IPv4 slot half of one. A plain array's values start right after
/// the map's header (`struct bpf_array`, 312 bytes on Linux 6.18: 56 bytes
/// into a line), where every IPv6 slot and every other IPv4 slot straddled
/// two lines: two cold reads for one slot.
#[map]
pub static FLOW_V4: Array<FlowEntryV4> = Array::with_max_entries(FLOW_CACHE_ENTRIES, MMAPABLE);

/// The flow verdict cache, IPv6; as [`FLOW_V4`].
#[map]
pub static FLOW_V6: Array<FlowEntryV6> = Array::with_max_entries(FLOW_CACHE_ENTRIES, MMAPABLE);

/// The flow cache's door (door.rs): one entry per CPU (user space sizes it
/// to the possible CPUs; one entry when the cache is off), indexed by the
/// CPU's number. Memory-mappable for its alignment only (see [`FLOW_V4`]):
/// each entry is a whole number of cache lines, so no two CPUs share one.
/// Written and read by the program only.
#[map]
pub static DOOR: Array<crate::door::Door> = Array::with_max_entries(1, MMAPABLE);

/// Stateful mode's connection table, IPv4 (conn.rs): buckets of
/// `CONN_WAYS` slots (egress-common's conn.rs) shared by all CPUs, every
/// generation of the attachment and its companion program (user space pins it
/// and hands the same map to each load). Sized by `max_flows`; memory-mappable
/// only so that every bucket starts a cache line.
#[map]
pub static CONN_V4: Array<ConnBucketV4> = Array::with_max_entries(conn_buckets(DEFAULT_MAX_FLOWS), MMAPABLE);

/// The connection table, IPv6; as [`CONN_V4`].
#[map]
pub static CONN_V6: Array<ConnBucketV6> = Array::with_max_entries(conn_buckets(DEFAULT_MAX_FLOWS), MMAPABLE);

/// Per CPU: the coarse clock as last read, and packets left before the next read
/// (stats.rs). Not shared with user space.
#[map]
pub static CLOCK: PerCpuArray<crate::stats::Clock> = PerCpuArray::with_max_entries(1, 0);

/// Deny events for user space (events.rs); shared by every generation.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Event counters (`ES_*` slots), per CPU; shared like [`EVENTS`].
#[map]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STATS_LEN, 0);

/// Per-rule event rate limits (slot = counter slot), shared by the CPUs.
#[map]
pub static EVENT_LIMITS: Array<EventLimit> = Array::with_max_entries(MAX_RULES + 1, 0);

/// Connection-table counters (`CS_*` slots), per CPU; shared like the table.
#[map]
pub static CONN_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CONN_STATS_LEN, 0);

/// Rules by domain name (dns.rs): the patterns of the rule set by (hash,
/// kind), sized to the rule set at load; written by user space.
#[map]
pub static DNS_PATTERNS: HashMap<PatKey, PatValue> = HashMap::with_max_entries(1, 0);

/// Each pattern's stage-1 answer per family (by pattern id; id 0: every
/// pattern's rules together). Sized at load; written by user space.
#[map]
pub static DNS_CLASSES: HashMap<u64, DnsClass> = HashMap::with_max_entries(1, 0);

/// The resolvers whose answers may teach (`[dns] resolvers`).
#[map]
pub static DNS_RESOLVERS: HashMap<ResolverKey, u32> = HashMap::with_max_entries(DNS_MAX_RESOLVERS, 0);

/// Learned addresses, IPv4: a set-associative table of buckets shared by every
/// generation and the companion program (pinned). Sized by `max_addresses`.
#[map]
pub static DNS_LEARN_V4: Array<LearnBucket> = Array::with_max_entries(1, 0);

/// Learned addresses, IPv6; as [`DNS_LEARN_V4`].
#[map]
pub static DNS_LEARN_V6: Array<LearnBucket> = Array::with_max_entries(1, 0);

/// Queries seen leaving toward a resolver, until their answer (pinned).
#[map]
pub static DNS_QUERIES: LruHashMap<QueryKey, QueryValue> = LruHashMap::with_max_entries(DNS_QUERY_ENTRIES, 0);

/// The question names addresses were learned from (pinned; read by `egress dns`).
#[map]
pub static DNS_NAMES: LruHashMap<u64, DnsName> = LruHashMap::with_max_entries(1, 0);

/// DNS counters (`DS_*` slots), per CPU (pinned).
#[map]
pub static DNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DNS_STATS_LEN, 0);

/// The split program (index 0) for the call-free entry point of a stateless
/// rule set with rules by name: DNS queries and flow-cache misses go on to
/// it (tail call). One per program type; per generation, pinned.
#[map]
pub static DNS_TAIL_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static DNS_TAIL_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static DNS_TAIL_CG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The DNS parser's working memory, per CPU (a message is 2 KiB: not for the stack).
#[map]
pub static DNS_SCRATCH: PerCpuArray<crate::dns::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The cgroups that have a rule set of egress's (id -> 1), pinned once for the
/// host and shared by every cgroup attachment (cgroup.rs).
#[map]
pub static CG_OWNERS: HashMap<u64, u32> = HashMap::with_max_entries(CG_MAX_OWNERS, 0);
