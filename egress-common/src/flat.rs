//! Stage 1 in flat arrays: the destination lookup (longest matching
//! destination prefix -> destination class) as a multibit trie of direct
//! tables with sorted address spans at its leaves (ARCHITECTURE.md, "Stage 1").
//!
//! Per family, DIR_V4/DIR_V6 hold the root table (indexed by the address's top
//! [`DIR_ROOT_BITS`] bits) followed by chunks of [`DIR_CHUNK_LEN`] entries, one
//! per further address byte. An entry is a destination class (every address
//! under it has the same one), a chunk (look up the next byte there), or a
//! bucket: a short sorted run of SPAN_V4/SPAN_V6, each the first address of a
//! stretch of addresses with one class, searched for the last span starting at
//! or before the address. Classes index DST_CLASSES (0: no rule's destination
//! contains the address).
//!
//! Stage 2 (a destination class whose rules name sources) has the same form
//! over the source address: SDIR_V4/SDIR_V6 start with one entry per class
//! (covering every source), chunks follow (one per address byte, from the
//! first), buckets are in SSPAN_V4/SSPAN_V6, and the answers index PAIR_LISTS
//! (0: no candidate rule has a source containing the address).

use core::mem::size_of;

pub const MAP_DIR_V4: &str = "DIR_V4";
pub const MAP_DIR_V6: &str = "DIR_V6";
pub const MAP_SPAN_V4: &str = "SPAN_V4";
pub const MAP_SPAN_V6: &str = "SPAN_V6";
pub const MAP_DST_CLASSES: &str = "DST_CLASSES";
pub const MAP_SDIR_V4: &str = "SDIR_V4";
pub const MAP_SDIR_V6: &str = "SDIR_V6";
pub const MAP_SSPAN_V4: &str = "SSPAN_V4";
pub const MAP_SSPAN_V6: &str = "SSPAN_V6";
pub const MAP_PAIR_LISTS: &str = "PAIR_LISTS";

/// Bits of the address that index the root table.
pub const DIR_ROOT_BITS: u32 = 16;
/// Entries of the root table (DIR index 0 ..).
pub const DIR_ROOT_LEN: u32 = 1 << DIR_ROOT_BITS;
/// Entries of a chunk: one address byte.
pub const DIR_CHUNK_LEN: u32 = 256;
/// Most chunks per table: bounds a DIR or SDIR map at
/// `(DIR_ROOT_LEN + DIR_MAX_CHUNKS * DIR_CHUNK_LEN) * 8` bytes (32.5 MiB).
/// When a rule set needs more, the compiler lets buckets grow (up to
/// [`BUCKET_LIMIT`] spans) instead.
pub const DIR_MAX_CHUNKS: u32 = 16_384;
/// Most spans in a bucket.
pub const BUCKET_LIMIT: u32 = 256;
/// Chunk levels below the root: one per address byte left.
pub const DIR_LEVELS_V4: u32 = (32 - DIR_ROOT_BITS) / 8;
pub const DIR_LEVELS_V6: u32 = (128 - DIR_ROOT_BITS) / 8;
const _: () = assert!(DIR_ROOT_BITS.is_multiple_of(8));
/// Chunk levels below a class's entry in SDIR: every address byte.
pub const SDIR_LEVELS_V4: u32 = 4;
pub const SDIR_LEVELS_V6: u32 = 16;

/// [`DirEntry::aux`] kinds (top two bits).
pub const DIR_KIND_SHIFT: u32 = 30;
/// `val` is the destination class.
pub const DIR_CLASS: u32 = 0;
/// `val` is the DIR index of a chunk.
pub const DIR_CHUNK: u32 = 1;
/// `val` is the first SPAN index of a bucket, `aux`'s low 30 bits its length.
pub const DIR_BUCKET: u32 = 2;
pub const DIR_COUNT_MASK: u32 = (1 << DIR_KIND_SHIFT) - 1;

/// DIR_V4 / DIR_V6 value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DirEntry {
    pub val: u32,
    /// Kind << [`DIR_KIND_SHIFT`] | bucket length.
    pub aux: u32,
}
const _: () = assert!(size_of::<DirEntry>() == 8);

impl DirEntry {
    pub const fn class(c: u32) -> DirEntry {
        DirEntry { val: c, aux: DIR_CLASS << DIR_KIND_SHIFT }
    }
    pub const fn chunk(at: u32) -> DirEntry {
        DirEntry { val: at, aux: DIR_CHUNK << DIR_KIND_SHIFT }
    }
    pub const fn bucket(start: u32, len: u32) -> DirEntry {
        DirEntry { val: start, aux: DIR_BUCKET << DIR_KIND_SHIFT | len }
    }
    #[inline(always)]
    pub const fn kind(&self) -> u32 {
        self.aux >> DIR_KIND_SHIFT
    }
}

/// SPAN_V4 value: from `start` (host order) up to the next span's start, the
/// destination class is `class`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanV4 {
    pub start: u32,
    pub class: u32,
}
const _: () = assert!(size_of::<SpanV4>() == 8);

/// SPAN_V6 value; the start as two host-order halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanV6 {
    pub hi: u64,
    pub lo: u64,
    pub class: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SpanV6>() == 24);

/// Longest binary search in a bucket of at most [`BUCKET_LIMIT`] spans. Few
/// steps keep the verifier's work small (6.1 explores every iteration).
pub const SPAN_SEARCH_STEPS: u32 = 8;
const _: () = assert!(1 << SPAN_SEARCH_STEPS >= BUCKET_LIMIT);
