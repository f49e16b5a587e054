//! The flow verdict cache: one LRU hash lookup instead of the three LPM lookups
//! for every packet after a flow's first. Keyed by exactly the fields the verdict
//! depends on (addresses, protocol class, destination port or ICMP type/code), so a
//! hit returns what the full lookup would. A hit still counts for its rule: the
//! caller counts whatever slot the cache or the full lookup yields.
//!
//! Each apply loads fresh maps, so the cache starts empty with every rule set; the
//! generation stamped into each entry additionally guards against entries written
//! under another rule set should the cache map ever be shared across generations.

use egress_common::{FlowKeyV4, FlowKeyV6, FlowValue, flow_seal};

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
fn check<const N: usize>(src: &[u8; N], dst: &[u8; N], pkt: &Packet, p: *const FlowValue, generation: u32) -> Option<Decision> {
    // Copy the value out once; the seal then decides whether the copy is whole and ours.
    let v = unsafe { core::ptr::read_volatile(p) };
    if v.generation != generation || v.seal != flow_seal(src, dst, pkt.pclass, pkt.port, v.rule, v.action, v.generation) {
        return None;
    }
    Some((v.rule, v.action))
}

/// The cached verdict for the packet's flow, if any and still valid.
#[inline(always)]
pub fn get(pkt: &Packet, generation: u32) -> Option<Decision> {
    if pkt.v6 {
        let k = FlowKeyV6 { src: pkt.src, dst: pkt.dst, pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let p = FLOW_V6.get_ptr(&k)?;
        check(&k.src, &k.dst, pkt, p, generation)
    } else {
        let k = FlowKeyV4 { src: v4(&pkt.src), dst: v4(&pkt.dst), pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let p = FLOW_V4.get_ptr(&k)?;
        check(&k.src, &k.dst, pkt, p, generation)
    }
}

/// Remembers the verdict of the packet's flow. A failed insert (the map is full
/// of entries being updated) only costs the next packet a full lookup.
#[inline(always)]
pub fn put(pkt: &Packet, generation: u32, (rule, action): Decision) {
    if pkt.v6 {
        let k = FlowKeyV6 { src: pkt.src, dst: pkt.dst, pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let seal = flow_seal(&k.src, &k.dst, k.pclass, k.port, rule, action, generation);
        let _ = FLOW_V6.insert(&k, &FlowValue { rule, action, generation, seal }, 0);
    } else {
        let k = FlowKeyV4 { src: v4(&pkt.src), dst: v4(&pkt.dst), pclass: pkt.pclass, _pad: 0, port: pkt.port };
        let seal = flow_seal(&k.src, &k.dst, k.pclass, k.port, rule, action, generation);
        let _ = FLOW_V4.insert(&k, &FlowValue { rule, action, generation, seal }, 0);
    }
}
