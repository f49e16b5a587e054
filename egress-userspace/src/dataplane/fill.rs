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
    for ((name, _), (elem, bytes)) in Caps::default().rule_maps().into_iter().zip(tables(&placed)) {
        let data: &MapData = match ebpf.map(name) {
            Some(Map::Array(m)) => m,
            _ => return Err(DataplaneError::Other(format!("map {name} missing from the eBPF object, or not an array"))),
        };
        super::mmap::Mapped::new(data, name)?.write_diff(0, elem, bytes)?;
    }
    Ok(())
}

/// Each rule map's entries in `p` as the kernel stores them (value size,
/// bytes), in the order of [`Caps::rule_maps`].
pub(super) fn tables(p: &Placed) -> [(usize, &[u8]); 12] {
    fn bytes<V: aya::Pod>(v: &[V]) -> (usize, &[u8]) {
        // SAFETY: the rule maps' value types are repr(C) with no padding
        // (egress-common asserts their sizes), so every byte is initialised.
        (size_of::<V>(), unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) })
    }
    [
        bytes(&p.dir_v4),
        bytes(&p.span_v4),
        bytes(&p.dir_v6),
        bytes(&p.span_v6),
        bytes(&p.dst_classes),
        bytes(&p.sdir_v4),
        bytes(&p.sspan_v4),
        bytes(&p.sdir_v6),
        bytes(&p.sspan_v6),
        bytes(&p.pair_lists),
        bytes(&p.lists),
        bytes(&p.ranges),
    ]
}
