//! The memory of the structures the flat tables replaced: stage 1 and stage 2
//! were LPM tries (DST_V4/V6: address -> DstValue; PAIR_V4/V6: destination
//! class and source -> Lists). The same entries are written into such tries
//! here and the kernel's own figure is read back, so that BENCHMARKS.md can
//! set the flat tables' memory against them.

use egress::compile::{Compiled, Prefix};
use egress_common::{DstValue, Lists};

const MAP_CREATE: libc::c_long = 0;
const MAP_UPDATE_ELEM: libc::c_long = 2;
const LPM_TRIE: u64 = 11;
const NO_PREALLOC: u64 = 1;

/// bpf(2) with a zeroed 72-byte attribute block.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 9]) -> std::io::Result<i64> {
    // SAFETY: attr is a bpf_attr of 72 bytes, filled for `cmd`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<[u64; 9]>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// An LPM trie of `(key data, prefix length, value)` entries (key data of
/// `data_len` bytes); its `memlock`.
fn trie_bytes(data_len: usize, entries: &[(Vec<u8>, u32, Vec<u8>)]) -> anyhow::Result<u64> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let Some((_, _, first)) = entries.first() else { return Ok(0) };
    let mut a = [0u64; 9];
    a[0] = LPM_TRIE | ((4 + data_len) as u64) << 32;
    a[1] = first.len() as u64 | (entries.len() as u64) << 32;
    a[2] = NO_PREALLOC;
    // SAFETY: a new map's fd, owned (and closed) by this value only.
    let fd = unsafe { OwnedFd::from_raw_fd(bpf(MAP_CREATE, &mut a)? as i32) };
    for (data, len, v) in entries {
        let mut key = len.to_ne_bytes().to_vec();
        key.extend_from_slice(data);
        let mut a = [0u64; 9];
        (a[0], a[1], a[2]) = (fd.as_raw_fd() as u64, key.as_ptr() as u64, v.as_ptr() as u64);
        bpf(MAP_UPDATE_ELEM, &mut a)?;
    }
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    Ok(info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|m| m.trim().parse().ok()).unwrap_or(0))
}

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain repr(C) value of the maps (DstValue, Lists).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// Bytes the kernel accounts for the design-before's four LPM tries holding
/// this rule set's stage-1 and stage-2 entries.
pub(crate) fn lpm_bytes(c: &Compiled) -> anyhow::Result<u64> {
    let width = |v6: bool| if v6 { 16 } else { 4 };
    let mut total = 0;
    for (v6, dst) in [(false, &c.dst_v4), (true, &c.dst_v6)] {
        let entries: Vec<_> =
            dst.iter().map(|(p, v): &(Prefix, DstValue)| (p.addr[..width(v6)].to_vec(), p.len as u32, bytes_of(v))).collect();
        total += trie_bytes(width(v6), &entries)?;
    }
    for (v6, pair) in [(false, &c.pair_v4), (true, &c.pair_v6)] {
        let entries: Vec<_> = pair
            .iter()
            .map(|(class, p, l): &(u32, Prefix, Lists)| {
                let mut k = class.to_be_bytes().to_vec();
                k.extend_from_slice(&p.addr[..width(v6)]);
                (k, 32 + p.len as u32, bytes_of(l))
            })
            .collect();
        total += trie_bytes(4 + width(v6), &entries)?;
    }
    Ok(total)
}
