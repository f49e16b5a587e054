//! COUNTERS: one flat array, a run of slots per possible CPU (egress-common's
//! `counter_stride`), memory-mapped for reading and for zeroing a hot reload's
//! idle half. A generation loaded by an earlier egress has a per-CPU array
//! instead: still read (the fold and readouts of an upgrade), never reloaded
//! hot (hot.rs refuses it).

use aya::maps::{Map, MapData, MapType, PerCpuArray};
use egress_common::{Counter, MAP_COUNTERS, counter_stride};

use super::{DataplaneError, Result, map_err, mmap::Mapped};

/// The CPUs the kernel may run a program on (COUNTERS holds a run for each).
pub(super) fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io { op: "count the possible CPUs".into(), source: e })
}

/// COUNTERS' (entries per CPU, entries) for `slots` counter slots.
pub(super) fn layout(slots: u32) -> Result<(u32, u32)> {
    let stride = counter_stride(slots);
    let entries = possible_cpus()?
        .checked_mul(stride as usize)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| DataplaneError::Other(format!("COUNTERS: {stride} slots on every possible CPU pass 2^32 entries")))?;
    Ok((stride, entries))
}

/// A pinned COUNTERS map as the type it was created with.
pub(super) fn as_map(data: MapData) -> Result<Map> {
    let per_cpu = data.info().map_err(map_err("read COUNTERS' info"))?.map_type().ok() == Some(MapType::PerCpuArray);
    Ok(if per_cpu { Map::PerCpuArray(data) } else { Map::Array(data) })
}

/// One counter's values on every CPU, summed (the latest `last`).
fn sum_cpus(values: impl Iterator<Item = Counter>) -> Counter {
    values.fold(Counter::default(), |c, v| Counter { packets: c.packets + v.packets, bytes: c.bytes + v.bytes, last: c.last.max(v.last) })
}

/// Every slot of COUNTERS summed over CPUs (index = slot, both halves).
pub(super) fn sum(map: &Map) -> Result<Vec<Counter>> {
    match map {
        Map::Array(data) => {
            let all: Vec<Counter> = Mapped::new(data, MAP_COUNTERS)?.read_all()?;
            let stride = all.len() / possible_cpus()?.max(1);
            let runs: Vec<&[Counter]> = all.chunks_exact(stride.max(1)).collect();
            Ok((0..stride).map(|i| sum_cpus(runs.iter().map(|r| r[i]))).collect())
        }
        Map::PerCpuArray(data) => sum_per_cpu(map, data),
        _ => Err(DataplaneError::Other("COUNTERS is neither an array nor a per-CPU array".into())),
    }
}

/// An earlier egress's per-CPU COUNTERS (batched: one syscall per 65,536 entries).
fn sum_per_cpu(map: &Map, data: &MapData) -> Result<Vec<Counter>> {
    let n = data.info().map_err(map_err("read COUNTERS' info"))?.max_entries();
    if let Some((values, stride)) = super::batch::read_per_cpu(data, MAP_COUNTERS, n, size_of::<Counter>())? {
        let each = size_of::<Counter>().next_multiple_of(8);
        return Ok(values
            .chunks_exact(stride)
            .map(|per_cpu| {
                // SAFETY: `each` >= size_of::<Counter>() bytes, a plain-data value as the kernel stores it.
                sum_cpus(per_cpu.chunks_exact(each).map(|v| unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<Counter>()) }))
            })
            .collect());
    }
    let arr: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map).map_err(map_err("open COUNTERS"))?;
    let mut out = Vec::with_capacity(arr.len() as usize);
    for i in 0..arr.len() {
        let per_cpu = arr.get(&i, 0).map_err(map_err("read COUNTERS"))?;
        out.push(sum_cpus(per_cpu.iter().copied()));
    }
    Ok(out)
}

/// Zeroes slots `start..start + n` on every CPU (a hot reload's idle half,
/// which no program counts into meanwhile).
pub(super) fn zero(data: &MapData, start: u32, n: u32) -> Result<()> {
    let mut m = Mapped::new(data, MAP_COUNTERS)?;
    let entries = data.info().map_err(map_err("read COUNTERS' info"))?.max_entries();
    let cpus = possible_cpus()? as u32;
    let stride = entries / cpus.max(1);
    if start + n > stride {
        return Err(DataplaneError::Other(format!("COUNTERS: slots {start}..+{n} past its {stride} per CPU")));
    }
    (0..cpus).try_for_each(|c| m.zero(c * stride + start, n))
}
