//! Which half of the rule maps a packet reads (egress-common's halves.rs): EPOCH
//! is read once per packet, into `Packet::epoch`, and everything after uses
//! that value, so a hot reload's bump never splits a packet between halves.

use egress_common::half_of;

use crate::maps::EPOCH;

/// Load-time globals (set by user space): where half 1 starts in DIR_V4,
/// DIR_V6 and COUNTERS.
#[unsafe(no_mangle)]
static HALF_DIR_V4: u32 = 0;
#[unsafe(no_mangle)]
static HALF_DIR_V6: u32 = 0;
#[unsafe(no_mangle)]
static HALF_COUNTERS: u32 = 0;

/// EPOCH as it stands.
#[inline(always)]
pub fn now() -> u32 {
    match EPOCH.get(0) {
        Some(e) => unsafe { core::ptr::read_volatile(e) },
        None => 0,
    }
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
