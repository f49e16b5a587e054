//! The flow verdict cache: once a flow is in it (from its second packet,
//! door.rs), one array read instead of the full lookup. Keyed by exactly the fields the verdict depends on (addresses,
//! protocol class, destination port or ICMP type/code), so a hit returns what the
//! full lookup would. A hit still counts for its rule: the caller counts whatever
//! slot the cache or the full lookup yields.
//!
//! Direct-mapped: a flow has one slot (a hash of its key); a newer flow with the
//! same slot replaces it. No locks, no LRU lists: a hit reads one cache line and
//! writes nothing. Slots are shared by all CPUs and written with plain stores, so
//! a read can be torn by a concurrent write; the key is compared in full and the
//! seal (a hash over key and verdict) rejects a torn slot (see `FlowValue`).
//! Each apply loads fresh maps, so the cache starts empty with every rule set; the
//! generation stamped into each slot also guards a shared cache.
//!
//! A verdict that depends on learned names ([`FLOW_LEARNED`], rules by name)
//! is cached too, with a deadline (the earliest expiry of what was learned
//! for its destination) and its learned bucket's epoch, which learning and
//! eviction bump: a hit checks both (dns.rs `cache_tag`), so expiry takes
//! effect at once and a newly learned address is never hidden by a verdict
//! cached before.

use egress_common::{FLOW_LEARNED, FlowKeyV4, FlowKeyV6, FlowValue, flow_seal, flow_slot};

use crate::{
    dns,
    maps::{FLOW_V4, FLOW_V6},
    parse::Packet,
};

/// A verdict as (counter slot, action).
pub type Decision = (u32, u32);

#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

#[inline(always)]
fn valid<const N: usize>(src: &[u8; N], dst: &[u8; N], pkt: &Packet, v: &FlowValue, deadline: u32, generation: u32) -> Option<Decision> {
    if v.generation != generation {
        return None;
    }
    let tag = if v.action & FLOW_LEARNED != 0 { dns::cache_tag(pkt, deadline)? } else { 0 };
    if v.seal != flow_seal(src, dst, pkt.pclass, pkt.port, v.rule, v.action, v.generation ^ tag) {
        return None;
    }
    Some((v.rule, v.action & !FLOW_LEARNED))
}

/// The packet's flow hash (egress-common's `flow_slot`): its slot is the hash
/// masked to the cache's size, and the door (door.rs) takes other bits of it.
#[inline(always)]
pub fn hash(pkt: &Packet) -> u32 {
    if pkt.v6 { flow_slot(&pkt.src, &pkt.dst, pkt.pclass, pkt.port) } else { flow_slot(&v4(&pkt.src), &v4(&pkt.dst), pkt.pclass, pkt.port) }
}

/// The cached verdict for the packet's flow, if slot `at` holds it.
#[inline(always)]
pub fn get(pkt: &Packet, at: u32, generation: u32) -> Option<Decision> {
    if pkt.v6 {
        let k = FlowKeyV6 { src: pkt.src, dst: pkt.dst, pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let p = FLOW_V6.get_ptr(at)?;
        // The key in place, then one copy of the value; the seal judges the pair.
        if unsafe { (*p).key } != k {
            return None;
        }
        let v = unsafe { core::ptr::read_volatile(&(*p).value) };
        let deadline = unsafe { core::ptr::read_volatile(&(*p).deadline) };
        valid(&k.src, &k.dst, pkt, &v, deadline, generation)
    } else {
        let k = FlowKeyV4 { src: v4(&pkt.src), dst: v4(&pkt.dst), pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let p = FLOW_V4.get_ptr(at)?;
        if unsafe { (*p).key } != k {
            return None;
        }
        let v = unsafe { core::ptr::read_volatile(&(*p).value) };
        let deadline = unsafe { core::ptr::read_volatile(&(*p).deadline) };
        valid(&k.src, &k.dst, pkt, &v, deadline, generation)
    }
}

/// Remembers the verdict of the packet's flow in slot `at`. `SPLIT` (the stateful
/// program): one BPF function per family, each keeping its key and seal
/// arithmetic in a frame of its own (BPF's 512 bytes of stack are shared along
/// every chain of calls); without it, no call.
#[inline(always)]
pub fn put<const SPLIT: bool>(pkt: &Packet, at: u32, generation: u32, d: Decision) {
    match (SPLIT, pkt.v6) {
        (true, true) => put_v6_call(pkt, at, generation, d),
        (true, false) => put_v4_call(pkt, at, generation, d),
        (false, true) => put_v6(pkt, at, generation, d),
        (false, false) => put_v4(pkt, at, generation, d),
    }
}

#[inline(never)]
fn put_v6_call(pkt: &Packet, at: u32, generation: u32, d: Decision) {
    put_v6(pkt, at, generation, d)
}

#[inline(never)]
fn put_v4_call(pkt: &Packet, at: u32, generation: u32, d: Decision) {
    put_v4(pkt, at, generation, d)
}

#[inline(always)]
fn put_v6(pkt: &Packet, at: u32, generation: u32, (rule, action): Decision) {
    let (deadline, tag) = terms(action);
    // Straight from the packet into the slot: no key copy on the stack.
    let seal = flow_seal(&pkt.src, &pkt.dst, pkt.pclass, pkt.port, rule, action, generation ^ tag);
    if let Some(p) = FLOW_V6.get_ptr_mut(at) {
        unsafe {
            (*p).key.src = pkt.src;
            (*p).key.dst = pkt.dst;
            (*p).key.pclass = pkt.pclass;
            (*p).key._pad = 0;
            (*p).key.port = pkt.port;
            (*p).deadline = deadline;
            core::ptr::write_volatile(&mut (*p).value, FlowValue { rule, action, generation, seal });
        }
    }
}

#[inline(always)]
fn put_v4(pkt: &Packet, at: u32, generation: u32, (rule, action): Decision) {
    let (deadline, tag) = terms(action);
    let key = FlowKeyV4 { src: v4(&pkt.src), dst: v4(&pkt.dst), pclass: pkt.pclass, _pad: 0, port: pkt.port };
    let seal = flow_seal(&key.src, &key.dst, key.pclass, key.port, rule, action, generation ^ tag);
    if let Some(p) = FLOW_V4.get_ptr_mut(at) {
        unsafe {
            (*p).key = key;
            (*p).deadline = deadline;
            core::ptr::write_volatile(&mut (*p).value, FlowValue { rule, action, generation, seal });
        }
    }
}

/// A slot's deadline and seal tag: (0, 0) for a verdict that does not depend
/// on learned names; else what the lookup that found it recorded.
#[inline(always)]
fn terms(action: u32) -> (u32, u32) {
    if action & FLOW_LEARNED != 0 { dns::cache_terms() } else { (0, 0) }
}
