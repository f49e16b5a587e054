//! Batched reads of a per-CPU array (BPF_MAP_LOOKUP_BATCH), many entries to a
//! syscall, laid out as the kernel reads them: an earlier egress's per-CPU
//! COUNTERS (counters.rs). Kernels without batch support for the map type
//! get one syscall per entry.

use std::io;

use aya::maps::MapData;

use super::{DataplaneError, Result};

/// `union bpf_attr` as BPF_MAP_LOOKUP_BATCH reads it.
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
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries per batch syscall: big enough that the syscall cost vanishes, small
/// enough that a failing entry is found quickly.
const BATCH_CHUNK: usize = 65_536;

/// A map's file descriptor, as the bpf syscall takes it.
pub(super) fn fd_of(data: &MapData) -> u32 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    data.fd().as_fd().as_raw_fd() as u32
}

/// Entries `0..n` of the per-CPU array behind `data`, whose values are `size`
/// bytes: each entry's values on every CPU, `size` rounded up to 8 bytes apart
/// (as the kernel lays them out). None: the kernel has no batch lookup for
/// the map (read it entry by entry).
pub(super) fn read_per_cpu(data: &MapData, name: &str, n: u32, size: usize) -> Result<Option<(Vec<u8>, usize)>> {
    let stride = size.next_multiple_of(8) * super::counters::possible_cpus()?;
    let fd = fd_of(data);
    let mut values = vec![0u8; n as usize * stride];
    let mut keys = vec![0u8; n as usize * 4];
    let mut done = 0usize;
    // The key the next batch starts after (none: from entry 0).
    let mut after = 0u32;
    while done < n as usize {
        let want = (n as usize - done).min(BATCH_CHUNK);
        let mut out = 0u32;
        let mut attr = BatchAttr {
            in_batch: if done == 0 { 0 } else { &after as *const u32 as u64 },
            out_batch: &mut out as *mut u32 as u64,
            keys: keys[done * 4..].as_mut_ptr() as u64,
            values: values[done * stride..].as_mut_ptr() as u64,
            count: want as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at live buffers with room for `want` keys and
        // values of the map's sizes, and at `after`/`out`; the kernel writes
        // at most `want` of each, `out` and attr.count.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
        let got = attr.count as usize;
        if rc < 0 {
            let e = io::Error::last_os_error();
            let unsupported = matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(524 /* ENOTSUPP */));
            if done == 0 && got == 0 && unsupported {
                return Ok(None);
            }
            // ENOENT: the map ended early (it is smaller than asked).
            if e.raw_os_error() != Some(libc::ENOENT) || done + got < n as usize {
                return Err(DataplaneError::MapMemory { op: format!("read map {name}: entries {done}.. of {n}"), error: e });
            }
        }
        if got == 0 {
            return Err(DataplaneError::Other(format!("read map {name}: the kernel returned no entries at {done} of {n}")));
        }
        done += got;
        after = out;
    }
    Ok(Some((values, stride)))
}
