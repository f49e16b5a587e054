//! Deny events: a denied (or audited) packet is reported to user space through
//! the EVENTS ring buffer, rate-limited per rule in the kernel (GCRA, the
//! token bucket's one-number form), so a flood cannot swamp user space: each
//! rule gets one event per interval and a burst after a quiet spell; the events
//! held back are counted and the next event of the rule carries their number.
//! Only the deny path runs this: allowed packets pay nothing. Inlined in the
//! stateless program (a BPF-to-BPF call anywhere in it costs the hot path some
//! 40 ns, measured), a BPF function of its own in the stateful one (stack).

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_coarse_ns};
use egress_common::{DenyEvent, DnsDenyEvent, DnsName, ES_LOST, ES_SENT, ES_SUPPRESSED, ProcDenyEvent};

use crate::{
    frame::Frame,
    maps::{EVENT_LIMITS, EVENT_STATS, EVENTS},
    parse::Packet,
};

/// Load-time global (set by user space): ns between a rule's events; 0 = off.
#[unsafe(no_mangle)]
static EVENT_INTERVAL: u64 = 0;
/// Load-time global (set by user space): the burst tolerance, ns.
#[unsafe(no_mangle)]
static EVENT_TOLERANCE: u64 = 0;

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}

/// Reports a packet the rule in counter slot `slot` denied (or audited);
/// `SPLIT`: as a BPF call (the stateful program).
#[inline(always)]
pub fn denied<C: Frame, const SPLIT: bool>(ctx: &C, pkt: &Packet, slot: u32, action: u32) {
    if SPLIT { denied_call(ctx, pkt, slot, action) } else { report(ctx, pkt, slot, action) }
}

#[inline(never)]
fn denied_call<C: Frame>(ctx: &C, pkt: &Packet, slot: u32, action: u32) {
    report(ctx, pkt, slot, action)
}

/// The rate limit: Some((now, events held back before this one)) when the
/// rule in `slot` may report now.
#[inline(always)]
fn admit(slot: u32) -> Option<(u64, u64)> {
    // read_volatile: keep the loader-patched value instead of the compiled-in one.
    let interval = unsafe { core::ptr::read_volatile(&EVENT_INTERVAL) };
    if interval == 0 {
        return None;
    }
    let tolerance = unsafe { core::ptr::read_volatile(&EVENT_TOLERANCE) };
    let l = EVENT_LIMITS.get_ptr_mut(slot)?;
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Shared by the CPUs without a lock: a race lets one extra event through.
    let (tat, suppressed) = unsafe { ((*l).tat, (*l).suppressed) };
    if now.saturating_add(tolerance) < tat {
        unsafe { (*l).suppressed = suppressed + 1 };
        bump(ES_SUPPRESSED);
        return None;
    }
    unsafe {
        (*l).tat = if tat > now { tat } else { now } + interval;
        (*l).suppressed = 0;
    }
    Some((now, suppressed))
}

/// Writes a packet's event in place (no copy on the stack).
#[inline(always)]
fn event<C: Frame>(e: *mut DenyEvent, ctx: &C, pkt: &Packet, slot: u32, action: u32, now: u64, suppressed: u64) {
    unsafe {
        (*e).time_ns = now;
        (*e).slot = slot;
        (*e).action = action;
        (*e).len = ctx.bytes() as u32;
        (*e).suppressed = suppressed as u32;
        (*e).v6 = pkt.v6 as u8;
        (*e).pclass = pkt.pclass;
        (*e).port = pkt.port;
        (*e).sport = pkt.sport;
        (*e)._pad = [0; 2];
        (*e).src = pkt.src;
        (*e).dst = pkt.dst;
    }
}

#[inline(always)]
fn report<C: Frame>(ctx: &C, pkt: &Packet, slot: u32, action: u32) {
    let Some((now, suppressed)) = admit(slot) else { return };
    let Some(mut e) = EVENTS.reserve::<DenyEvent>(0) else {
        bump(ES_LOST);
        return;
    };
    event(e.as_mut_ptr(), ctx, pkt, slot, action, now, suppressed);
    e.submit(0);
    bump(ES_SENT);
}

/// Reports a DNS query denied (or audited) by the rule in `slot`, with its
/// question name (a longer record than a packet's; user space tells them apart
/// by size).
#[inline(always)]
pub fn denied_dns<C: Frame>(ctx: &C, pkt: &Packet, slot: u32, action: u32, name: &DnsName) {
    let Some((now, suppressed)) = admit(slot) else { return };
    let Some(mut e) = EVENTS.reserve::<DnsDenyEvent>(0) else {
        bump(ES_LOST);
        return;
    };
    let p = e.as_mut_ptr();
    unsafe {
        event(&mut (*p).event, ctx, pkt, slot, action, now, suppressed);
        core::ptr::copy_nonoverlapping(name, &mut (*p).name, 1);
    }
    e.submit(0);
    bump(ES_SENT);
}

/// Reports a socket call (connect, sendmsg) refused by the rule in `slot`, with
/// the caller's pid and command name (a record of its own size).
#[inline(always)]
pub fn denied_proc<C: Frame>(ctx: &C, pkt: &Packet, slot: u32, action: u32) {
    let Some((now, suppressed)) = admit(slot) else { return };
    let Some(mut e) = EVENTS.reserve::<ProcDenyEvent>(0) else {
        bump(ES_LOST);
        return;
    };
    let p = e.as_mut_ptr();
    unsafe {
        event(&mut (*p).event, ctx, pkt, slot, action, now, suppressed);
        (*p).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*p)._pad = 0;
        (*p).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    e.submit(0);
    bump(ES_SENT);
}
