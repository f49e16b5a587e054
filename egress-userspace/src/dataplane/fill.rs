//! Writing a compiled rule set into the fresh maps of a load, through their
//! memory mappings (mmap.rs), and the rule maps' entries as bytes (hot.rs
//! writes a reload's the same way).

use aya::{
    Ebpf,
    maps::{Map, MapData},
};

use super::{DataplaneError, Result};
use crate::compile::{
    Compiled,
    place::{Caps, Placed, place},
};

/// Writes a compiled rule set into freshly created (zeroed) maps, as half 0,
/// through their memory mappings.
pub(super) fn fill(ebpf: &mut Ebpf, c: &Compiled) -> Result<()> {
    let placed = place(c, &Caps::default());
    for (name, _, elem, bytes) in tables(&Caps::default(), &placed) {
        let data: &MapData = match ebpf.map(name) {
            Some(Map::Array(m)) => m,
            _ => return Err(DataplaneError::Other(format!("map {name} missing from the eBPF object, or not an array"))),
        };
        super::mmap::Mapped::new(data, name)?.write_diff(0, elem, bytes)?;
    }
    Ok(())
}

/// Each rule map's entries in `p` as the kernel stores them: (map, where the
/// half starts in it by `bases`, value size, bytes). Name, base and entries of
/// a map stand on one line, so they cannot drift apart; `write_diff` refuses
/// bytes of another value size.
pub(super) fn tables<'a>(bases: &Caps, p: &'a Placed) -> [(&'static str, u32, usize, &'a [u8]); 12] {
    use egress_common::*;
    fn bytes<V: aya::Pod>(v: &[V]) -> (usize, &[u8]) {
        // SAFETY: the rule maps' value types are repr(C) with no padding
        // (egress-common asserts their sizes), so every byte is initialised.
        (size_of::<V>(), unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) })
    }
    let t = |name, base, (size, b): (usize, &'a [u8])| (name, base, size, b);
    let b = bases;
    [
        t(MAP_DIR_V4, b.dir_v4, bytes(&p.dir_v4)),
        t(MAP_SPAN_V4, b.span_v4, bytes(&p.span_v4)),
        t(MAP_DIR_V6, b.dir_v6, bytes(&p.dir_v6)),
        t(MAP_SPAN_V6, b.span_v6, bytes(&p.span_v6)),
        t(MAP_DST_CLASSES, b.dst_classes, bytes(&p.dst_classes)),
        t(MAP_SDIR_V4, b.sdir_v4, bytes(&p.sdir_v4)),
        t(MAP_SSPAN_V4, b.sspan_v4, bytes(&p.sspan_v4)),
        t(MAP_SDIR_V6, b.sdir_v6, bytes(&p.sdir_v6)),
        t(MAP_SSPAN_V6, b.sspan_v6, bytes(&p.sspan_v6)),
        t(MAP_PAIR_LISTS, b.pair_lists, bytes(&p.pair_lists)),
        t(MAP_LISTS, b.lists, bytes(&p.lists)),
        t(MAP_RANGES, b.ranges, bytes(&p.ranges)),
    ]
}
