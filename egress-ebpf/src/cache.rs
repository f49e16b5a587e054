//! The flow verdict cache: after a flow's first packet, one array read instead of
//! the full lookup. Keyed by exactly the fields the verdict depends on (addresses,
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

use egress_common::{FlowKeyV4, FlowKeyV6, FlowValue, flow_seal, flow_slot};

use crate::{
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
fn valid<const N: usize>(src: &[u8; N], dst: &[u8; N], pkt: &Packet, v: &FlowValue, generation: u32) -> Option<Decision> {
    if v.generation != generation || v.seal != flow_seal(src, dst, pkt.pclass, pkt.port, v.rule, v.action, v.generation) {
        return None;
    }
    Some((v.rule, v.action))
}

/// The cached verdict for the packet's flow, if its slot holds it.
#[inline(always)]
pub fn get(pkt: &Packet, mask: u32, generation: u32) -> Option<Decision> {
    if pkt.v6 {
        let k = FlowKeyV6 { src: pkt.src, dst: pkt.dst, pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let p = FLOW_V6.get_ptr(flow_slot(&k.src, &k.dst, k.pclass, k.port) & mask)?;
        // The key in place, then one copy of the value; the seal judges the pair.
        if unsafe { (*p).key } != k {
            return None;
        }
        let v = unsafe { core::ptr::read_volatile(&(*p).value) };
        valid(&k.src, &k.dst, pkt, &v, generation)
    } else {
        let k = FlowKeyV4 { src: v4(&pkt.src), dst: v4(&pkt.dst), pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let p = FLOW_V4.get_ptr(flow_slot(&k.src, &k.dst, k.pclass, k.port) & mask)?;
        if unsafe { (*p).key } != k {
            return None;
        }
        let v = unsafe { core::ptr::read_volatile(&(*p).value) };
        valid(&k.src, &k.dst, pkt, &v, generation)
    }
}

/// Remembers the verdict of the packet's flow in its slot. `SPLIT` (the stateful
/// program): one BPF function per family, each keeping its key and seal
/// arithmetic in a frame of its own (BPF's 512 bytes of stack are shared along
/// every chain of calls); without it, no call.
#[inline(always)]
pub fn put<const SPLIT: bool>(pkt: &Packet, mask: u32, generation: u32, d: Decision) {
    match (SPLIT, pkt.v6) {
        (true, true) => put_v6_call(pkt, mask, generation, d),
        (true, false) => put_v4_call(pkt, mask, generation, d),
        (false, true) => put_v6(pkt, mask, generation, d),
        (false, false) => put_v4(pkt, mask, generation, d),
    }
}

#[inline(never)]
fn put_v6_call(pkt: &Packet, mask: u32, generation: u32, d: Decision) {
    put_v6(pkt, mask, generation, d)
}

#[inline(never)]
fn put_v4_call(pkt: &Packet, mask: u32, generation: u32, d: Decision) {
    put_v4(pkt, mask, generation, d)
}

#[inline(always)]
fn put_v6(pkt: &Packet, mask: u32, generation: u32, (rule, action): Decision) {
    // Straight from the packet into the slot: no key copy on the stack.
    let seal = flow_seal(&pkt.src, &pkt.dst, pkt.pclass, pkt.port, rule, action, generation);
    if let Some(p) = FLOW_V6.get_ptr_mut(flow_slot(&pkt.src, &pkt.dst, pkt.pclass, pkt.port) & mask) {
        unsafe {
            (*p).key.src = pkt.src;
            (*p).key.dst = pkt.dst;
            (*p).key.pclass = pkt.pclass;
            (*p).key._pad = 0;
            (*p).key.port = pkt.port;
            core::ptr::write_volatile(&mut (*p).value, FlowValue { rule, action, generation, seal });
        }
    }
}

#[inline(always)]
fn put_v4(pkt: &Packet, mask: u32, generation: u32, (rule, action): Decision) {
    let key = FlowKeyV4 { src: v4(&pkt.src), dst: v4(&pkt.dst), pclass: pkt.pclass, _pad: 0, port: pkt.port };
    let seal = flow_seal(&key.src, &key.dst, key.pclass, key.port, rule, action, generation);
    if let Some(p) = FLOW_V4.get_ptr_mut(flow_slot(&key.src, &key.dst, key.pclass, key.port) & mask) {
        unsafe {
            (*p).key = key;
            core::ptr::write_volatile(&mut (*p).value, FlowValue { rule, action, generation, seal });
        }
    }
}
