//! The rule maps and COUNTERS mapped into user space (BPF_F_MMAPABLE arrays): writing a
//! rule set is a memory compare and copy instead of one kernel update per
//! entry, and a hot reload reads what the idle half holds in place, so it
//! writes only the entries that differ. EPOCH's flip is one aligned 4-byte
//! store, which no reader can see torn (a map update copies bytes with
//! memcpy, which promises no such thing).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;

use super::{DataplaneError, Result, map_err};

/// BPF_F_MMAPABLE.
const MMAPABLE: u32 = 1 << 10;

/// An array map's values, mapped: entry `i` at `i * elem` bytes.
pub(super) struct Mapped {
    ptr: *mut u8,
    len: usize,
    elem: usize,
    /// The map's value size (entries are `elem`, this rounded up to 8, apart).
    value_size: usize,
    entries: u32,
    name: String,
}

impl Mapped {
    /// Maps the whole array behind `data` (read and write, shared with the kernel).
    pub(super) fn new(data: &MapData, name: &str) -> Result<Mapped> {
        let info = data.info().map_err(map_err(format!("read map {name}'s info")))?;
        if info.map_flags() & MMAPABLE == 0 {
            return Err(DataplaneError::Other(format!("map {name} is not memory-mappable (loaded by an earlier egress)")));
        }
        let elem = (info.value_size() as usize).next_multiple_of(8);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (elem * info.max_entries() as usize).next_multiple_of(page);
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's value area, which the kernel
        // sizes to at least `len` bytes; unmapped in Drop.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::MapMemory { op: format!("map {name} into memory"), error: io::Error::last_os_error() });
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
            elem,
            value_size: info.value_size() as usize,
            entries: info.max_entries(),
            name: name.to_string(),
        })
    }

    /// Writes `new` (entries of `size` bytes) at entries `start..`, skipping
    /// each entry that holds those bytes already; returns how many it wrote.
    /// Only for entries no program reads meanwhile (a fresh map, an idle half).
    pub(super) fn write_diff(&mut self, start: u32, size: usize, new: &[u8]) -> Result<u64> {
        let n = new.len() / size.max(1);
        // The exact value size: entries written to the wrong map never fit.
        if size != self.value_size || !new.len().is_multiple_of(size) || start as usize + n > self.entries as usize {
            return Err(DataplaneError::Other(format!(
                "map {}: {n} entries of {size} bytes at {start} do not fit its {} entries of {} bytes",
                self.name, self.entries, self.value_size
            )));
        }
        // SAFETY: bounds checked above: entries start..start + n lie in the
        // mapping, each `elem` >= `size` bytes apart; nothing else writes them.
        let area = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start as usize * self.elem), n * self.elem) };
        let mut written = 0;
        for (held, v) in area.chunks_exact_mut(self.elem).zip(new.chunks_exact(size)) {
            if held[..size] != *v {
                held[..size].copy_from_slice(v);
                written += 1;
            }
        }
        Ok(written)
    }

    /// Every entry as a `T` (plain data of the map's value size), each read
    /// once while programs may be writing it (COUNTERS' sums).
    pub(super) fn read_all<T: Copy>(&self) -> Result<Vec<T>> {
        if size_of::<T>() != self.value_size || align_of::<T>() > 8 {
            return Err(DataplaneError::Other(format!("map {}: values of {} bytes, not {}", self.name, self.value_size, size_of::<T>())));
        }
        // SAFETY: entries 0..entries lie in the mapping, `elem` bytes apart from
        // its page-aligned start, so each is aligned for T (at most 8) and
        // holds size_of::<T>() bytes; volatile, as the kernel writes them.
        Ok((0..self.entries as usize).map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(i * self.elem).cast::<T>()) }).collect())
    }

    /// Zeroes `n` entries from `start`. Only for entries no program writes
    /// meanwhile (an idle half's counters).
    pub(super) fn zero(&mut self, start: u32, n: u32) -> Result<()> {
        if start as usize + n as usize > self.entries as usize {
            return Err(DataplaneError::Other(format!("map {}: entries {start}..+{n} past its {}", self.name, self.entries)));
        }
        // SAFETY: bounds checked above.
        unsafe { std::ptr::write_bytes(self.ptr.add(start as usize * self.elem), 0, n as usize * self.elem) };
        Ok(())
    }

    /// One aligned 4-byte store at entry `index` (EPOCH's flip).
    pub(super) fn store_u32(&mut self, index: u32, v: u32) -> Result<()> {
        if index >= self.entries || self.elem < 4 {
            return Err(DataplaneError::Other(format!("map {}: no u32 entry {index}", self.name)));
        }
        // SAFETY: in bounds, and entries are 8-byte aligned in a page-aligned mapping.
        unsafe { std::ptr::write_volatile(self.ptr.add(index as usize * self.elem).cast::<u32>(), v) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
