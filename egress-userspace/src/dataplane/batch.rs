//! Batched array access: entries written (BPF_MAP_UPDATE_BATCH) and read
//! (BPF_MAP_LOOKUP_BATCH) many to a syscall, laid out as the kernel reads
//! them. Per-CPU counters are zeroed for a hot reload's idle half and read for
//! the counter fold and `egress counters` this way. Kernels without batch
//! support for a map type get one syscall per entry.

use std::io;

use aya::maps::MapData;

use super::{BPF_MAP_UPDATE_ELEM, DataplaneError, ElemAttr, Result};

/// Array entries laid out as the kernel reads them in a batch: keys (the u32
/// indexes) in one buffer, values in another.
struct Batch {
    keys: Vec<u8>,
    values: Vec<u8>,
    count: usize,
}

/// `union bpf_attr` as BPF_MAP_UPDATE_BATCH and BPF_MAP_LOOKUP_BATCH read it.
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

/// Zeroes `n` entries from `start` of the per-CPU array behind `fd`, whose
/// values are `size` bytes, on every CPU (hot.rs: a half's counters).
pub(super) fn zero_per_cpu(fd: u32, name: &str, start: u32, n: u32, size: usize) -> Result<()> {
    let stride = size.next_multiple_of(8) * possible_cpus()?;
    let mut b = Batch { keys: Vec::with_capacity(n as usize * 4), values: vec![0; n as usize * stride], count: n as usize };
    for i in 0..n {
        b.keys.extend_from_slice(&(start + i).to_ne_bytes());
    }
    write_batch_fd(fd, name, &b)
}

/// The CPUs a per-CPU map holds a value for.
fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io { op: "count the possible CPUs".into(), source: e })
}

/// Entries `0..n` of the per-CPU array behind `data`, whose values are `size`
/// bytes: each entry's values on every CPU, `size` rounded up to 8 bytes apart
/// (as the kernel lays them out). None: the kernel has no batch lookup for
/// the map (read it entry by entry).
pub(super) fn read_per_cpu(data: &MapData, name: &str, n: u32, size: usize) -> Result<Option<(Vec<u8>, usize)>> {
    let stride = size.next_multiple_of(8) * possible_cpus()?;
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
