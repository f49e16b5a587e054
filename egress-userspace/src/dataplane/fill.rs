//! Writing a compiled rule set into the fresh maps of a load, through their
//! memory mappings (mmap.rs), and the rule maps' entries as bytes (hot.rs
//! writes a reload's the same way); zeroing per-CPU counters in batches laid
//! out as the kernel reads them (BPF_MAP_UPDATE_BATCH), one element at a time
//! where a kernel has no batch update for a map type.

use std::io;

use aya::{
    Ebpf,
    maps::{Map, MapData},
};

use super::{BPF_MAP_UPDATE_ELEM, DataplaneError, ElemAttr, Result};
use crate::compile::{
    Compiled,
    place::{Caps, Placed, place},
};

/// Array entries laid out as the kernel reads them in a batch: keys (the u32
/// indexes) in one buffer, values in another.
struct Batch {
    keys: Vec<u8>,
    values: Vec<u8>,
    count: usize,
}

/// `union bpf_attr` as BPF_MAP_UPDATE_BATCH reads it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries per batch syscall: big enough that the syscall cost vanishes, small
/// enough that a failing entry is found quickly.
const BATCH_CHUNK: usize = 65_536;

/// A map's file descriptor, as the bpf syscall takes it.
pub(super) fn fd_of(data: &MapData) -> u32 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    data.fd().as_fd().as_raw_fd() as u32
}

/// Writes a batch into the map behind `fd` with BPF_MAP_UPDATE_BATCH, one
/// syscall per [`BATCH_CHUNK`] entries. Kernels without batch support for the
/// map type (EINVAL/ENOTSUPP before any entry is written) get one update per entry.
fn write_batch_fd(fd: u32, name: &str, b: &Batch) -> Result<()> {
    if b.count == 0 {
        return Ok(());
    }
    let (ks, vs) = (b.keys.len() / b.count, b.values.len() / b.count);
    let mut done = 0;
    while done < b.count {
        let n = (b.count - done).min(BATCH_CHUNK);
        let mut attr = BatchAttr {
            keys: b.keys[done * ks..].as_ptr() as u64,
            values: b.values[done * vs..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at live buffers holding `n` keys and values of the
        // map's sizes; the kernel only reads them (and writes attr.count).
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let unsupported = matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(524 /* ENOTSUPP */));
            if done == 0 && attr.count == 0 && unsupported {
                return write_one_by_one(fd, name, b, ks, vs);
            }
            let at = done + attr.count as usize;
            return Err(DataplaneError::MapMemory { op: format!("write map {name}: entry {at} of {}", b.count), error: e });
        }
        done += n;
    }
    Ok(())
}

fn write_one_by_one(fd: u32, name: &str, b: &Batch, ks: usize, vs: usize) -> Result<()> {
    for i in 0..b.count {
        let mut attr = ElemAttr {
            map_fd: fd,
            key: b.keys[i * ks..].as_ptr() as u64,
            value: b.values[i * vs..].as_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: as in write_batch, for one entry.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &mut attr as *mut ElemAttr, std::mem::size_of::<ElemAttr>()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(DataplaneError::MapMemory { op: format!("write map {name}: entry {i} of {}", b.count), error: e });
        }
    }
    Ok(())
}

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

/// Zeroes `n` entries from `start` of the per-CPU array behind `fd`, whose
/// values are `size` bytes, on every CPU (hot.rs: a half's counters).
pub(super) fn zero_per_cpu(fd: u32, name: &str, start: u32, n: u32, size: usize) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io { op: "count the possible CPUs".into(), source: e })?;
    let stride = size.next_multiple_of(8) * cpus;
    let mut b = Batch { keys: Vec::with_capacity(n as usize * 4), values: vec![0; n as usize * stride], count: n as usize };
    for i in 0..n {
        b.keys.extend_from_slice(&(start + i).to_ne_bytes());
    }
    write_batch_fd(fd, name, &b)
}
