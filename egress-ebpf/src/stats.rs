//! Counters: per-rule packets/bytes, the time of the latest packet, and the
//! STATS slots. Each CPU writes only its own values, so plain adds are
//! race-free; user space sums the CPUs (and takes the latest time).

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns};

use crate::{
    frame::Frame,
    maps::{CLOCK, COUNTERS, STATS},
};

/// The per-CPU clock cache: reading the clock is a helper call, which would
/// double the cost of a flow-cache hit; the time is read once every
/// `CLOCK_EVERY` packets of the CPU and reused in between. A rule's last hit is
/// therefore the time of that CPU's latest read: at most `CLOCK_EVERY` of its
/// packets earlier than the hit (on a busy CPU, microseconds).
pub struct Clock {
    now: u64,
    left: u64,
}

const CLOCK_EVERY: u64 = 16;

#[inline(always)]
fn coarse_now() -> u64 {
    let Some(c) = CLOCK.get_ptr_mut(0) else { return 0 };
    unsafe {
        if (*c).left == 0 {
            (*c).now = bpf_ktime_get_coarse_ns();
            (*c).left = CLOCK_EVERY;
        } else {
            (*c).left -= 1;
        }
        (*c).now
    }
}

/// Load-time global (set by user space): COUNTERS' entries per CPU
/// (egress-common's `GLOBAL_COUNTER_STRIDE`).
#[unsafe(no_mangle)]
static COUNTER_STRIDE: u32 = 0;

#[inline(always)]
/// Counts a packet for rule `slot` in the half whose counters start at `base`
/// (epoch.rs; 0 in the programs that never read EPOCH), in this CPU's run of
/// COUNTERS: no other CPU writes it, so plain adds are race-free.
pub fn count_rule(ctx: &impl Frame, base: u32, slot: u32) {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let stride = unsafe { core::ptr::read_volatile(&COUNTER_STRIDE) };
    if let Some(c) = COUNTERS.get_ptr_mut(cpu.wrapping_mul(stride).wrapping_add(base).wrapping_add(slot)) {
        unsafe {
            (*c).packets += ctx.packets();
            (*c).bytes += ctx.bytes();
            (*c).last = coarse_now();
        }
    }
}

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}
