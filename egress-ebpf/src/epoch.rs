//! Which half of the rule maps a packet reads (egress-common's halves.rs): the
//! call-free body reads EPOCH once per packet and passes that value to the
//! lookup, the counters and the flow cache, so a hot reload's bump never
//! splits a packet between halves. The split body (stateful, rules by name)
//! and the cgroup programs never read it: their rule sets have one half.

use egress_common::half_of;

use crate::maps::EPOCH;

/// Load-time global (set by user space): 1 when EPOCH is read (egress-common's
/// `GLOBAL_HOT`); 0: half 0 always, and the branch below is dead code to the verifier.
#[unsafe(no_mangle)]
static HOT: u32 = 0;

/// Load-time globals (set by user space): where half 1 starts in DIR_V4,
/// DIR_V6 and COUNTERS.
#[unsafe(no_mangle)]
static HALF_DIR_V4: u32 = 0;
#[unsafe(no_mangle)]
static HALF_DIR_V6: u32 = 0;
#[unsafe(no_mangle)]
static HALF_COUNTERS: u32 = 0;

/// Whether this program reads EPOCH (the global HOT).
#[inline(always)]
pub fn hot() -> bool {
    unsafe { core::ptr::read_volatile(&HOT) != 0 }
}

/// EPOCH as it stands (0 when not [`hot`]). `None` never happens (a one-entry array, index 0),
/// but the 6.1 verifier explores it: callers end the packet there rather than
/// carry on with a constant epoch, which would double the states it verifies
/// through the whole lookup (past its 1,000,000-instruction limit).
#[inline(always)]
pub fn now() -> Option<u32> {
    if !hot() {
        return Some(0);
    }
    EPOCH.get(0).map(|e| unsafe { core::ptr::read_volatile(e) })
}

#[inline(always)]
fn base(epoch: u32, global: &'static u32) -> u32 {
    half_of(epoch) * unsafe { core::ptr::read_volatile(global) }
}

/// Where the live half's DIR_V4 root starts.
#[inline(always)]
pub fn dir_v4(epoch: u32) -> u32 {
    base(epoch, &HALF_DIR_V4)
}

/// Where the live half's DIR_V6 root starts.
#[inline(always)]
pub fn dir_v6(epoch: u32) -> u32 {
    base(epoch, &HALF_DIR_V6)
}

/// Where the live half's counter slots start.
#[inline(always)]
pub fn counters(epoch: u32) -> u32 {
    base(epoch, &HALF_COUNTERS)
}
