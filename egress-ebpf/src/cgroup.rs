//! Workload scope: the classifier on a cgroup (v2) and its descendants.
//! - `egress_cgroup` (cgroup_skb/egress): every packet a socket of the cgroup
//!   sends, from its IP header (no link layer). The same call-free body as the
//!   interface hook; 1 passes, 0 drops.
//! - `egress_cgroup_sf`: the split body (stateful mode: the connection table
//!   first; rules by name: DNS queries and the learned destinations). A
//!   stateless rule set by name attaches `egress_cgroup`, which hands DNS
//!   queries and flow-cache misses on to it (tail call, DNS_TAIL_CG).
//! - `egress_cgroup_track` (cgroup_skb ingress): the companion; follows replies
//!   and connections opened from outside (stateful), and learns from DNS
//!   answers reaching the cgroup's processes (rules by name).
//! - `egress_cgroup_dbg`, `egress_cgroup_sf_dbg`: debug mode's twins (log why
//!   they drop a packet they cannot parse).
//! - `egress_connect4|6`, `egress_sendmsg4|6` (cgroup/connect*, cgroup/sendmsg*):
//!   a TCP or UDP connect(), or a UDP sendto() with an address, is classified
//!   from the call's addresses before any packet exists. A deny refuses the
//!   call (EPERM at once, instead of a SYN dropped into a timeout); it counts as
//!   one packet of no bytes on its rule, and its deny event names the caller.
//!   Anything else is left to the packet hook, which counts the packets. A call
//!   whose source address is not chosen yet is decided here only when no rule
//!   names a source (`SRC_ANY`); else by the packet hook.
//!
//! The kernel runs the programs of every ancestor cgroup too. Each attachment
//! hands over to the nearest cgroup with a rule set of its own (CG_OWNERS):
//! when one lies between it and the socket's cgroup, it allows, and that one
//! decides.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id},
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use egress_common::{ACTION_DENY, CG_MAX_NEST, FLOW_LEARNED, PCLASS_TCP, PCLASS_UDP};

use crate::{
    conn,
    dns::{self, global},
    events,
    maps::CG_OWNERS,
    parse::{self, Packet},
    program::{CONN_ON, DNS_PORT, decide, full},
    stats,
};

/// Load-time globals (set by user space): the cgroup's id and level, and 1
/// when no rule names a source.
#[unsafe(no_mangle)]
static CG_ID: u64 = 0;
#[unsafe(no_mangle)]
static CG_LEVEL: u32 = 0;
#[unsafe(no_mangle)]
static SRC_ANY: u32 = 0;

#[cgroup_skb(egress)]
pub fn egress_cgroup(ctx: SkBuffContext) -> i32 {
    packet::<false, false>(&ctx)
}

/// The split body: stateful mode, or a stateless rule set by name's misses.
#[cgroup_skb(egress)]
pub fn egress_cgroup_sf(ctx: SkBuffContext) -> i32 {
    packet::<true, false>(&ctx)
}

/// Debug mode: logs why it drops a packet it cannot parse.
#[cgroup_skb(egress)]
pub fn egress_cgroup_dbg(ctx: SkBuffContext) -> i32 {
    packet::<false, true>(&ctx)
}

/// The split body in debug mode (stateful, or rules by name).
#[cgroup_skb(egress)]
pub fn egress_cgroup_sf_dbg(ctx: SkBuffContext) -> i32 {
    packet::<true, true>(&ctx)
}

/// The packet hook's body: hand over to a nearer owner, else decide.
#[inline(always)]
fn packet<const SPLIT: bool, const DEBUG: bool>(ctx: &SkBuffContext) -> i32 {
    if nearer_for_socket(ctx) {
        return 1;
    }
    decide::<_, SPLIT, DEBUG>(ctx) as i32
}

/// The companion on the cgroup's ingress. Stateful mode: follows replies and
/// connections opened from outside (a server in the cgroup answers its
/// clients). Rules by name: learns from the DNS answers the cgroup's
/// processes receive (so each cgroup learns only what it asked). Never drops.
#[cgroup_skb(ingress)]
pub fn egress_cgroup_track(ctx: SkBuffContext) -> i32 {
    if !nearer_for_socket(&ctx) {
        let mut pkt = Packet::default();
        if parse::parse::<_, true>(&ctx, false, &mut pkt).is_ok() {
            if global(&CONN_ON) != 0 {
                conn::other_side(&ctx, &pkt);
            }
            if dns::on() && (pkt.pclass == PCLASS_UDP || pkt.pclass == PCLASS_TCP) && pkt.sport == DNS_PORT {
                dns::answer(&ctx, &pkt);
            }
        }
    }
    1
}

/// Whether a cgroup between this one and the socket's has a rule set of its own.
#[inline(always)]
fn nearer_for_socket(ctx: &SkBuffContext) -> bool {
    let level = global(&CG_LEVEL) as i32;
    // The socket's ancestors below this cgroup, nearest to this one first.
    for i in 1..=CG_MAX_NEST as i32 {
        let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, level + i) };
        if id == 0 {
            return false;
        }
        if unsafe { CG_OWNERS.get(&id) }.is_some() {
            return true;
        }
    }
    false
}

/// Does nothing and passes every packet: the cgroup_skb baseline of the
/// benchmark (never attached by `egress`).
#[cgroup_skb(egress)]
pub fn egress_cgroup_pass(_ctx: SkBuffContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    call::<false, false>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    call::<true, false>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    call::<false, true>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    call::<true, true>(&ctx)
}

/// Whether a nearer cgroup with a rule set of its own decides for the caller.
/// The caller's cgroup stands for the socket's (the kernel runs these programs
/// for the socket's cgroup, which is where the socket was created); when the
/// caller is not below this cgroup any more (it moved), this one decides.
#[inline(always)]
fn nearer_for_caller() -> bool {
    let level = global(&CG_LEVEL) as i32;
    if unsafe { bpf_get_current_ancestor_cgroup_id(level) } != global(&CG_ID) {
        return false;
    }
    for i in 1..=CG_MAX_NEST as i32 {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level + i) };
        if id == 0 {
            return false;
        }
        if unsafe { CG_OWNERS.get(&id) }.is_some() {
            return true;
        }
    }
    false
}

/// IPv4-mapped IPv6 (::ffff:a.b.c.d): the packet will be IPv4.
#[inline(always)]
fn mapped(w: &[u32; 4]) -> bool {
    w[0] == 0 && w[1] == 0 && w[2] == 0xffffu32.to_be()
}

/// 1: the call goes on (the packet hook judges its packets); 0: refused (EPERM).
#[inline(always)]
fn call<const V6: bool, const SENDMSG: bool>(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let pclass = match sa.protocol {
        6 => PCLASS_TCP,
        17 => PCLASS_UDP,
        _ => return 1,
    };
    let mut pkt = Packet::default();
    pkt.pclass = pclass;
    // The port's two bytes as they sit in memory: network order.
    pkt.port = (sa.user_port as u16).to_ne_bytes();
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if sk.is_null() {
        return 1;
    }
    if V6 {
        let dst = sa.user_ip6;
        let src = unsafe { (*sk).src_ip6 };
        // msg_src_* exist for sendmsg only (the verifier refuses the read elsewhere).
        let msg_src = if SENDMSG { sa.msg_src_ip6 } else { [0; 4] };
        let src = if SENDMSG && msg_src != [0; 4] { msg_src } else { src };
        if mapped(&dst) {
            pkt.dst[..4].copy_from_slice(&dst[3].to_ne_bytes());
            if mapped(&src) {
                pkt.src[..4].copy_from_slice(&src[3].to_ne_bytes());
            } else if src != [0; 4] {
                return 1;
            }
        } else {
            pkt.v6 = true;
            for i in 0..4 {
                pkt.dst[i * 4..i * 4 + 4].copy_from_slice(&dst[i].to_ne_bytes());
                pkt.src[i * 4..i * 4 + 4].copy_from_slice(&src[i].to_ne_bytes());
            }
        }
    } else {
        let src = unsafe { (*sk).src_ip4 };
        let msg_src = if SENDMSG { sa.msg_src_ip4 } else { 0 };
        let src = if SENDMSG && msg_src != 0 { msg_src } else { src };
        pkt.dst[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
        pkt.src[..4].copy_from_slice(&src.to_ne_bytes());
    }
    if pkt.src == [0; 16] && global(&SRC_ANY) == 0 {
        return 1;
    }
    if nearer_for_caller() {
        return 1;
    }
    // Rules by name: the learned destinations too (the split lookup).
    let (slot, action) = if dns::on() { full::<true>(&pkt, 0) } else { full::<false>(&pkt, 0) };
    let action = action & !FLOW_LEARNED;
    if action != ACTION_DENY {
        return 1;
    }
    stats::count_rule(ctx, 0, slot);
    events::denied_proc(ctx, &pkt, slot, action);
    0
}
