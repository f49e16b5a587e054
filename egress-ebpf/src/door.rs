//! The flow cache's door: a flow is cached from its second packet, not its
//! first. A flow's first packet would otherwise pay for a cache slot it may
//! never use: the slot's read (a cold line of a table of megabytes) and its
//! write. A scan or a spoofed flood is all first packets, and each of them
//! would also evict a flow that is still sending (the cache is direct-mapped).
//!
//! Per CPU, bit arrays mark the flows seen lately: one bit a flow, chosen by
//! the flow's hash (bits the cache slot does not use). A packet whose bit is
//! set asks the cache as before; one whose bit is clear sets it and takes the
//! full lookup without touching the cache. Two flows sharing a bit only let
//! each other in early: the door decides where a verdict is looked up, never
//! what it is.
//!
//! Forgetting, in generations of [`DOOR_GENERATION`] turned-away packets:
//! marks go into the current generation's bits, the door reads the current
//! and the previous one's, and each turned-away packet clears one word of the
//! next one's, which is clean when its turn comes (four generations in turn:
//! the fourth is the one before the previous, which nothing reads). So a flow
//! is remembered for at least one generation (a flow whose second packet comes
//! within 4,096 first packets on the CPU is cached), and however long a flood
//! lasts, at most one bit in 8 of the two generations read is set (a first
//! packet gets past the door by such a collision at most that often). A cached
//! flow whose bit has been forgotten takes the full lookup once and is marked
//! again.
//!
//! Per CPU, so the door's lines are never shared (a flood on every CPU would
//! otherwise bounce them between the CPUs): a flow whose packets come from two
//! CPUs is let in on each of them separately.

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use egress_common::{DOOR_GENERATION, DOOR_WORDS};

use crate::maps::DOOR;

/// Words of the four generations (a power of two: indexes are masked).
const ALL_WORDS: usize = 4 * DOOR_WORDS as usize;

/// One CPU's door: a whole number of cache lines.
#[repr(C)]
pub struct Door {
    /// Generation g's words are `[g * DOOR_WORDS, (g + 1) * DOOR_WORDS)`.
    bits: [u64; ALL_WORDS],
    /// The generation marks go into (its low two bits).
    generation: u32,
    /// Packets turned away in it.
    turned: u32,
    _pad: [u64; 7],
}

/// Word `word` of generation `generation` (its low two bits) in [`Door::bits`].
/// Read back through the stack before the bounds check: LLVM can then no
/// longer prove the check true and drop it, and Linux 6.1's verifier, which
/// loses the bounds of the OR LLVM builds the index with, needs it.
#[inline(always)]
fn at(generation: u32, word: u32) -> Option<usize> {
    let i = (generation.wrapping_mul(DOOR_WORDS).wrapping_add(word) as usize) & (ALL_WORDS - 1);
    let i = unsafe { core::ptr::read_volatile(&i) };
    if i < ALL_WORDS { Some(i) } else { None }
}

/// Whether the flow of hash `h` (egress-common's `flow_slot`) was seen lately
/// on this CPU; if not, marks it.
#[inline(always)]
pub fn admits(h: u32) -> bool {
    // No entry (a map sized for fewer CPUs): the cache as if there were no door.
    let Some(d) = DOOR.get_ptr_mut(unsafe { bpf_get_smp_processor_id() }) else {
        return true;
    };
    let d = unsafe { &mut *d };
    let g = d.generation;
    let i = (h >> 19) & (DOOR_WORDS - 1);
    let bit = 1u64 << ((h >> 13) & 63);
    let (Some(now), Some(before)) = (at(g, i), at(g.wrapping_sub(1), i)) else {
        return true;
    };
    if (d.bits[now] | d.bits[before]) & bit != 0 {
        return true;
    }
    d.bits[now] |= bit;
    let turned = d.turned;
    if turned < DOOR_WORDS {
        if let Some(w) = at(g.wrapping_add(1), turned) {
            d.bits[w] = 0;
        }
    }
    if turned + 1 >= DOOR_GENERATION {
        d.generation = g.wrapping_add(1);
        d.turned = 0;
    } else {
        d.turned = turned + 1;
    }
    false
}
