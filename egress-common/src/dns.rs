//! Rules by domain name (`dst_fqdn`): the maps, records and hashing shared by the
//! program (which reads DNS queries and answers and learns addresses) and user
//! space (which writes the patterns and reads what was learned).
//!
//! Names are matched by hash, never by string compare in the kernel: each label
//! of a name is hashed (lower-cased), and the labels are folded from the right,
//! so every suffix of a name at a label boundary has a hash of its own
//! ([`dns_suffix`]). A pattern `deb.debian.org` is the hash of the whole name
//! with kind [`PAT_EXACT`]; `*.cdn.example.com` is the hash of the suffix
//! `cdn.example.com` with kind [`PAT_WILD`], which the program asks for every
//! proper suffix of a question name. The hash is keyed with a secret chosen
//! when the attachment is first made (kept in its state file), so that a name
//! whose hash collides with an allowed pattern cannot be crafted from outside.

use core::mem::size_of;

/// A pattern that matches one name exactly.
pub const PAT_EXACT: u32 = 0;
/// A pattern `*.suffix`: any name below the suffix.
pub const PAT_WILD: u32 = 1;

/// The per-generation map of patterns, by (hash, kind).
pub const MAP_DNS_PATTERNS: &str = "DNS_PATTERNS";
/// The per-generation map of each pattern's lookup classes, by pattern id.
pub const MAP_DNS_CLASSES: &str = "DNS_CLASSES";
/// The per-generation set of resolvers whose answers are trusted.
pub const MAP_DNS_RESOLVERS: &str = "DNS_RESOLVERS";
/// Learned addresses (shared by every generation of an attachment, pinned).
pub const MAP_DNS_LEARN_V4: &str = "DNS_LEARN_V4";
pub const MAP_DNS_LEARN_V6: &str = "DNS_LEARN_V6";
/// Queries seen leaving, waiting for their answer (shared, pinned).
pub const MAP_DNS_QUERIES: &str = "DNS_QUERIES";
/// The question names addresses were learned from, by name hash (shared, pinned).
pub const MAP_DNS_NAMES: &str = "DNS_NAMES";
/// DNS counters (`DS_*` slots), per CPU (shared, pinned).
pub const MAP_DNS_STATS: &str = "DNS_STATS";
/// Per-CPU scratch space of the DNS parser (not pinned, not read by user space).
pub const MAP_DNS_SCRATCH: &str = "DNS_SCRATCH";
/// The maps pinned per attachment (outliving generations and `egress run`).
pub const DNS_SHARED_MAPS: [&str; 5] = [MAP_DNS_LEARN_V4, MAP_DNS_LEARN_V6, MAP_DNS_QUERIES, MAP_DNS_NAMES, MAP_DNS_STATS];
/// The split program, for the call-free entry point to hand a packet on to
/// (tail call) when the rules by name must see it: a DNS query or a flow-cache
/// miss. One for TC, one for XDP, one for cgroup_skb (a program array holds
/// one program type).
/// Per generation, pinned: the kernel empties a program array when no
/// user-space reference to it remains.
pub const MAP_DNS_TAIL_TC: &str = "DNS_TAIL_TC";
pub const MAP_DNS_TAIL_XDP: &str = "DNS_TAIL_XDP";
pub const MAP_DNS_TAIL_CG: &str = "DNS_TAIL_CG";
/// The maps of one generation.
pub const DNS_GEN_MAPS: [&str; 6] =
    [MAP_DNS_PATTERNS, MAP_DNS_CLASSES, MAP_DNS_RESOLVERS, MAP_DNS_TAIL_TC, MAP_DNS_TAIL_XDP, MAP_DNS_TAIL_CG];

/// Load-time globals: 1 when the rule set names domains; the hash key (two
/// words); the TTL bounds (seconds); the learned tables' bucket mask.
pub const GLOBAL_DNS_ON: &str = "DNS_ON";
pub const GLOBAL_DNS_KEY0: &str = "DNS_KEY0";
pub const GLOBAL_DNS_KEY1: &str = "DNS_KEY1";
pub const GLOBAL_DNS_MIN_TTL: &str = "DNS_MIN_TTL";
pub const GLOBAL_DNS_MAX_TTL: &str = "DNS_MAX_TTL";
pub const GLOBAL_DNS_BUCKET_MASK: &str = "DNS_BUCKET_MASK";
/// Load-time global: 1 when the connection table is in use (stateful mode).
/// The split program also serves stateless rule sets that name domains.
pub const GLOBAL_CONN_ON: &str = "CONN_ON";

/// Ways per bucket of the learned tables (a set-associative cache: an address
/// lives in the bucket its hash picks, in any of its ways).
pub const DNS_WAYS: usize = 4;
/// Most patterns one question name can match and teach for (more are ignored).
pub const DNS_MAX_NAME_PATTERNS: usize = 8;
/// Most A/AAAA records learned from one answer.
pub const DNS_MAX_RECORDS: usize = 16;
/// Most labels in a name (255 bytes of wire format hold at most 127).
pub const DNS_MAX_LABELS: usize = 128;
/// Bytes of a DNS message the program reads (longer messages are malformed to it).
pub const DNS_BUF: usize = 2048;
/// Pending queries remembered at once (an LRU table).
pub const DNS_QUERY_ENTRIES: u32 = 16_384;
/// A query older than this has no answer (ns).
pub const DNS_QUERY_TIMEOUT_NS: u64 = 30_000_000_000;
/// Bounds and defaults of `[dns]`.
pub const DNS_DEFAULT_MIN_TTL: u64 = 60;
pub const DNS_DEFAULT_MAX_TTL: u64 = 86_400;
pub const DNS_DEFAULT_MAX_ADDRESSES: u32 = 65_536;
pub const DNS_MAX_MAX_ADDRESSES: u32 = 1 << 22;
pub const DNS_MAX_RESOLVERS: u32 = 64;

/// DNS_PATTERNS key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PatKey {
    /// The keyed hash of the name ([`PAT_EXACT`]) or of the suffix ([`PAT_WILD`]).
    pub hash: u64,
    pub kind: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<PatKey>() == 16);

/// DNS_PATTERNS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatValue {
    /// The pattern's id: an unkeyed hash of its text, stable across reloads, so
    /// that what was learned for a pattern stays learned while a rule names it.
    pub id: u64,
    /// The first rule (counter slot) naming the pattern, and its action code:
    /// a query whose first such rule denies is dropped.
    pub first_rule: u32,
    pub first_action: u32,
}
const _: () = assert!(size_of::<PatValue>() == 16);

/// DNS_RESOLVERS key: an address (IPv4 in the first four bytes) and its family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResolverKey {
    pub addr: [u8; 16],
    pub v6: u32,
}
const _: () = assert!(size_of::<ResolverKey>() == 20);

/// One learned address of a family (IPv4 in the first four bytes of `addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnWay {
    pub addr: [u8; 16],
    /// CLOCK_MONOTONIC_COARSE ns after which the entry is dead; 0: empty.
    pub expires: u64,
    /// The pattern id ([`PatValue::id`]).
    pub pattern: u64,
    /// The keyed hash of the question name (DNS_NAMES key).
    pub name: u64,
    /// [`learn_seal`] over the fields above: a way read while another CPU
    /// writes it fails the check and counts as absent.
    pub seal: u64,
}
const _: () = assert!(size_of::<LearnWay>() == 48);

/// A bucket of the learned tables (DNS_LEARN_V4 / DNS_LEARN_V6 element).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnBucket {
    pub ways: [LearnWay; DNS_WAYS],
    /// Changed whenever the bucket's set of live (address, pattern) pairs
    /// grows or loses a pair before its expiry (a new pair, an eviction, a
    /// sweep): the program writes the time in ns with the CPU's number. A cached verdict that depends on learned names carries the
    /// epoch it was computed under (in its seal, see [`crate::flow_learned_tag`]).
    pub epoch: u64,
}
const _: () = assert!(size_of::<LearnBucket>() == 200);

/// The check word of a learned way.
#[inline(always)]
pub fn learn_seal(addr: &[u8; 16], expires: u64, pattern: u64, name: u64) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    let mut i = 0;
    while i < 16 {
        let w = u64::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3], addr[i + 4], addr[i + 5], addr[i + 6], addr[i + 7]]);
        h = fmix64(h ^ w);
        i += 8;
    }
    fmix64(fmix64(fmix64(h ^ expires) ^ pattern) ^ name) | 1
}

/// The bucket of an address (before masking).
#[inline(always)]
pub fn learn_bucket(addr: &[u8; 16]) -> u32 {
    let a = u64::from_ne_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]);
    let b = u64::from_ne_bytes([addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15]]);
    (fmix64(a ^ fmix64(b)) >> 17) as u32
}

/// DNS_QUERIES key: a query as seen leaving (client = its source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub client: [u8; 16],
    pub resolver: [u8; 16],
    pub client_port: [u8; 2],
    pub id: [u8; 2],
    pub v6: u32,
}
const _: () = assert!(size_of::<QueryKey>() == 40);

/// DNS_QUERIES value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryValue {
    /// [`dns_question`] of the question (name, type, class).
    pub question: u64,
    /// When the query left (CLOCK_MONOTONIC_COARSE ns).
    pub sent: u64,
}
const _: () = assert!(size_of::<QueryValue>() == 16);

/// DNS_NAMES value: a question name in wire format, lower-cased, and its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsName {
    pub len: u32,
    pub _pad: u32,
    pub wire: [u8; 256],
}
const _: () = assert!(size_of::<DnsName>() == 264);
impl Default for DnsName {
    fn default() -> Self {
        DnsName { len: 0, _pad: 0, wire: [0; 256] }
    }
}

/// DNS_CLASSES value: for a pattern (or id 0, the union of every pattern's
/// rules), per family, what stage 1 of the lookup would yield for a
/// destination learned for it (see egress-ebpf classify.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsClass {
    pub v4: crate::DstValue,
    pub v6: crate::DstValue,
}
const _: () = assert!(size_of::<DnsClass>() == 56);

/// DNS_STATS slots.
/// Answers that taught at least one address.
pub const DS_ANSWERS: u32 = 0;
/// (address, pattern) pairs newly learned; and refreshed by a later answer.
pub const DS_LEARNED: u32 = 1;
pub const DS_REFRESHED: u32 = 2;
/// Answers ignored: not from a listed resolver, no matching query, malformed
/// (or truncated, or longer than the program reads), and addresses not stored
/// because every way of their bucket holds an entry that lives longer.
pub const DS_NOT_RESOLVER: u32 = 3;
pub const DS_NO_QUERY: u32 = 4;
pub const DS_MALFORMED: u32 = 5;
pub const DS_TABLE_FULL: u32 = 6;
/// Queries dropped because the first rule naming their question denies.
pub const DS_QUERIES_DENIED: u32 = 7;
/// Live entries pushed out of a full bucket (the one nearest to expiry).
pub const DS_EVICTED: u32 = 8;
/// Queries seen leaving toward a resolver (remembered for their answer).
pub const DS_QUERIES: u32 = 9;
pub const DNS_STATS_LEN: u32 = 10;
/// Names of the DNS_STATS slots (JSON keys and metric labels), index = slot.
pub const DNS_STAT_NAMES: [&str; DNS_STATS_LEN as usize] = [
    "answers_learned_from",
    "addresses_learned",
    "addresses_refreshed",
    "ignored_not_from_resolver",
    "ignored_no_matching_query",
    "ignored_malformed",
    "ignored_table_full",
    "queries_denied",
    "evicted",
    "queries_seen",
];

/// A deny event of a DNS query: the packet's event and the question name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsDenyEvent {
    pub event: crate::DenyEvent,
    pub name: DnsName,
}
const _: () = assert!(size_of::<DnsDenyEvent>() == 64 + 264);

// ---------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------

/// murmur3's 64-bit finaliser.
#[inline(always)]
pub const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// ASCII lower case (DNS compares names case-insensitively, ASCII only).
#[inline(always)]
pub const fn dns_lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// A label's hash before its first byte.
#[inline(always)]
pub const fn dns_label_start(key0: u64) -> u64 {
    key0 ^ 0xcbf2_9ce4_8422_2325
}

/// A label's hash after one more byte (lower-cased here).
#[inline(always)]
pub const fn dns_label_byte(h: u64, b: u8) -> u64 {
    (h ^ dns_lower(b) as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// A label's hash, finished with its length.
#[inline(always)]
pub const fn dns_label_end(h: u64, len: u8) -> u64 {
    fmix64(h ^ ((len as u64) << 56))
}

/// The hash of the suffix made of `label` in front of the suffix hashed `acc`;
/// the empty suffix (the root) is `key1`.
#[inline(always)]
pub const fn dns_suffix(acc: u64, label: u64, key1: u64) -> u64 {
    fmix64(acc.rotate_left(23) ^ label ^ key1)
}

/// The question a query asks, as one word: name hash, type and class.
#[inline(always)]
pub const fn dns_question(name: u64, qtype: u16, qclass: u16) -> u64 {
    fmix64(name ^ ((qtype as u64) << 16 | qclass as u64))
}

/// The keyed hash of a dotted name's suffix hashes, user-space side: returns
/// the hash of the whole name (`labels` left to right, lower case or not).
pub fn dns_name_hash<'a>(labels: impl DoubleEndedIterator<Item = &'a [u8]>, key0: u64, key1: u64) -> u64 {
    let mut acc = key1;
    for l in labels.rev() {
        let mut h = dns_label_start(key0);
        for &b in l {
            h = dns_label_byte(h, b);
        }
        acc = dns_suffix(acc, dns_label_end(h, l.len() as u8), key1);
    }
    acc
}
