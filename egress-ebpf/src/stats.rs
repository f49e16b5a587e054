//! Counters: per-rule packets/bytes and the STATS slots. Per-CPU maps, so plain
//! adds are race-free; user space sums the CPUs.

use crate::{
    frame::Frame,
    maps::{COUNTERS, STATS},
};

#[inline(always)]
pub fn count_rule(ctx: &impl Frame, slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        unsafe {
            (*c).packets += ctx.packets();
            (*c).bytes += ctx.bytes();
        }
    }
}

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}
