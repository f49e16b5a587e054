//! Programs of the throughput benchmark (`cargo xtask bench`, part 1g), never
//! attached by `egress`:
//! - `egress_gen6`: the traffic generator. Run by BPF_PROG_TEST_RUN with live
//!   frames (BPF_F_TEST_XDP_LIVE_FRAMES, the way xdp-trafficgen sends), it
//!   gives each IPv6 frame a random source address in 2001:db8::/32 (the
//!   documentation range: 96 random bits, so no flow repeats and no flow cache
//!   helps) and transmits it (XDP_TX) to the veth peer, where the program
//!   measured runs.
//! - `egress_xdp_drop`: the empty receiver (drops every frame): the baseline.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_TX},
    helpers::bpf_get_prandom_u32,
    macros::xdp,
    programs::XdpContext,
};

/// Ethernet header, then the IPv6 source address at 8 bytes into the IPv6 header.
const SRC_OFF: usize = 14 + 8;

#[xdp]
pub fn egress_gen6(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + SRC_OFF + 16 > end {
        return XDP_ABORTED;
    }
    // The first 4 bytes stay 2001:0db8.
    for i in 0..3 {
        let r = unsafe { bpf_get_prandom_u32() };
        let p = (data + SRC_OFF + 4 + 4 * i) as *mut u32;
        unsafe { p.write_unaligned(r) };
    }
    XDP_TX
}

#[xdp]
pub fn egress_xdp_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}
