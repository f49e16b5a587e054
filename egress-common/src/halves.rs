//! Hot reloads: every rule map holds two halves, and EPOCH says which one the
//! program reads. A reload that keeps the program (same hook, mode and
//! settings, room enough) writes the new rule set into the idle half, then
//! bumps EPOCH: a packet reads EPOCH once and is classified and counted by one
//! half, the old rule set or the new one, never a mix (ARCHITECTURE.md, "Hot
//! reloads").
//!
//! Only the entry points of the halves need the program's help: the roots of
//! DIR_V4/DIR_V6 and the counter slots. Every other index (chunks, buckets,
//! classes, lists, ranges) is written absolute, with its half's base already
//! added by user space.

/// EPOCH: one u32, bumped by each hot reload. Its low bit is the live half;
/// the whole value is part of the flow cache's generation, so verdicts cached
/// under the old half die with the bump. User space writes it; 4 aligned
/// bytes, so a reader never sees a torn value.
pub const MAP_EPOCH: &str = "EPOCH";

/// Load-time global: 1 when the program reads EPOCH (a stateless rule set
/// without rules by name, on an interface hook: the rule sets hot reloads
/// serve); 0: it reads half 0 only and never touches EPOCH, so the stateful,
/// rules-by-name and cgroup programs verify as without halves (the 6.1
/// verifier's instruction limit leaves them no room).
pub const GLOBAL_HOT: &str = "HOT";

/// Load-time globals: where half 1 starts in DIR_V4, DIR_V6 and COUNTERS (half
/// 0 starts at 0). 0 when the maps hold one half only.
pub const GLOBAL_HALF_DIR_V4: &str = "HALF_DIR_V4";
pub const GLOBAL_HALF_DIR_V6: &str = "HALF_DIR_V6";
pub const GLOBAL_HALF_COUNTERS: &str = "HALF_COUNTERS";

/// The live half of an EPOCH value.
#[inline(always)]
pub const fn half_of(epoch: u32) -> u32 {
    epoch & 1
}

/// The flow cache's generation for a load-time generation and an EPOCH value
/// (never 0: an empty slot's generation). Branch-free: a branch here would
/// give the verifier two states to carry through the whole lookup (the 6.1
/// verifier then passes its 1,000,000-instruction limit).
#[inline(always)]
pub const fn cache_generation(generation: u32, epoch: u32) -> u32 {
    (generation ^ epoch.wrapping_mul(0x9e37_79b9)) | 1
}
