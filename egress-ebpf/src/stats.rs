//! Counters: per-rule packets/bytes and the STATS slots. Per-CPU maps, so plain
//! adds are race-free; user space sums the CPUs.

use aya_ebpf::programs::TcContext;

use crate::maps::{COUNTERS, STATS};

#[inline(always)]
pub fn count_rule(ctx: &TcContext, slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // A GSO packet stands for gso_segs wire packets; count what goes on the wire.
        let segs = unsafe { (*ctx.skb.skb).gso_segs };
        let packets = if segs > 1 { segs as u64 } else { 1 };
        unsafe {
            (*c).packets += packets;
            (*c).bytes += ctx.len() as u64;
        }
    }
}

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}
