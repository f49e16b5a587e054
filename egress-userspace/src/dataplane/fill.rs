//! Writing a compiled rule set into the fresh maps of a load: batches laid out
//! as the kernel reads them (BPF_MAP_UPDATE_BATCH), one element at a time
//! where a kernel has no batch update for a map type.

use std::io;

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use egress_common::{
    DstValue, ListSlot, Lists, MAP_DST_V4, MAP_DST_V6, MAP_LISTS, MAP_PAIR_V4, MAP_PAIR_V6, MAP_RANGES, PairKeyV4, PairKeyV6, PortRange,
};

use super::{BPF_MAP_UPDATE_ELEM, DataplaneError, ElemAttr, Result};
use crate::compile::{Compiled, Prefix};

fn v4(p: &Prefix) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&p.addr[..4]);
    a
}
fn v6(p: &Prefix) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&p.addr[..16]);
    a
}

/// The bytes of a plain-old-data map key or value.
fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `Pod` types are `Copy`, `#[repr(C)]` and have no padding (egress-common
    // asserts their sizes), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Map entries laid out as the kernel reads them in a batch: keys in one buffer
/// (for an LPM trie `u32 prefix length (host order) ‖ data`, for an array the u32
/// index), values in another.
struct Batch {
    keys: Vec<u8>,
    values: Vec<u8>,
    count: usize,
}

impl Batch {
    fn with_capacity<K, V>(n: usize) -> Batch {
        Batch {
            keys: Vec::with_capacity(n * (4 + std::mem::size_of::<K>())),
            values: Vec::with_capacity(n * std::mem::size_of::<V>()),
            count: 0,
        }
    }
    fn push<K: aya::Pod, V: aya::Pod>(&mut self, prefix_len: u32, key: &K, value: &V) {
        self.keys.extend_from_slice(&prefix_len.to_ne_bytes());
        self.keys.extend_from_slice(pod_bytes(key));
        self.values.extend_from_slice(pod_bytes(value));
        self.count += 1;
    }
    /// An array entry: the key is the index.
    fn push_index<V: aya::Pod>(&mut self, index: u32, value: &V) {
        self.keys.extend_from_slice(&index.to_ne_bytes());
        self.values.extend_from_slice(pod_bytes(value));
        self.count += 1;
    }
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

/// Writes a batch into a map with BPF_MAP_UPDATE_BATCH, one syscall per
/// [`BATCH_CHUNK`] entries. Kernels without batch support for the map type
/// (EINVAL/ENOTSUPP before any entry is written) get one update per entry.
fn write_batch(ebpf: &mut Ebpf, name: &str, b: &Batch) -> Result<()> {
    if b.count == 0 {
        return Ok(());
    }
    let (ks, vs) = (b.keys.len() / b.count, b.values.len() / b.count);
    let map = ebpf.map_mut(name).ok_or_else(|| DataplaneError::Other(format!("map {name} missing from the eBPF object")))?;
    let data: &MapData = match map {
        Map::LpmTrie(m) | Map::Array(m) => m,
        _ => {
            return Err(DataplaneError::Other(format!("map {name} is neither an LPM trie nor an array")));
        }
    };
    let fd = {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        data.fd().as_fd().as_raw_fd() as u32
    };
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

/// Writes a compiled rule set into freshly created (empty) maps.
pub(super) fn fill(ebpf: &mut Ebpf, c: &Compiled) -> Result<()> {
    let mut b = Batch::with_capacity::<[u8; 4], DstValue>(c.dst_v4.len());
    for (p, v) in &c.dst_v4 {
        b.push(p.len as u32, &v4(p), v);
    }
    write_batch(ebpf, MAP_DST_V4, &b)?;
    let mut b = Batch::with_capacity::<[u8; 16], DstValue>(c.dst_v6.len());
    for (p, v) in &c.dst_v6 {
        b.push(p.len as u32, &v6(p), v);
    }
    write_batch(ebpf, MAP_DST_V6, &b)?;
    let mut b = Batch::with_capacity::<PairKeyV4, Lists>(c.pair_v4.len());
    for (class, s, list) in &c.pair_v4 {
        b.push(32 + s.len as u32, &PairKeyV4 { dst_class: class.to_be_bytes(), src: v4(s) }, list);
    }
    write_batch(ebpf, MAP_PAIR_V4, &b)?;
    let mut b = Batch::with_capacity::<PairKeyV6, Lists>(c.pair_v6.len());
    for (class, s, list) in &c.pair_v6 {
        b.push(32 + s.len as u32, &PairKeyV6 { dst_class: class.to_be_bytes(), src: v6(s) }, list);
    }
    write_batch(ebpf, MAP_PAIR_V6, &b)?;
    let mut b = Batch::with_capacity::<u32, ListSlot>(c.list_slots.len());
    for (i, v) in c.list_slots.iter().enumerate() {
        b.push_index(i as u32, v);
    }
    write_batch(ebpf, MAP_LISTS, &b)?;
    let mut b = Batch::with_capacity::<u32, PortRange>(c.ranges.len());
    for (i, v) in c.ranges.iter().enumerate() {
        b.push_index(i as u32, v);
    }
    write_batch(ebpf, MAP_RANGES, &b)
}
