//! Stateful mode's connection table from user space: where it is pinned, how a
//! new table (resized, or after a release's LRU table) takes the live
//! connections over, and what `egress counters` reports about it. The table
//! itself is created and pinned by the loader (load.rs) and filled by the
//! program (egress-ebpf conn.rs); its layout is egress-common's conn.rs.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
};
use egress_common::{CONN_WAYS, ConnBucket, ConnKeyV4, ConnKeyV6, ConnSlot, ConnValue, MAP_CONN_V4, MAP_CONN_V6, conn_bucket, conn_seal};

use super::{DataplaneError, Result, load::sum_stats, map_err};
use crate::rules::StateConfig;

/// Where the connection table of `max_flows` entries is pinned under `conn_dir`
/// (the size is part of the path: a resized table is a new table).
pub(super) fn conn_table_dir(conn_dir: &Path, max_flows: u32) -> PathBuf {
    conn_dir.join(format!("c{max_flows}"))
}

/// Where the table of `max_flows` entries an attachment uses now is pinned:
/// [`conn_table_dir`], or the LRU hash of a release before the bucketed table
/// (`m{max_flows}`) until the next apply carries its connections over.
pub(super) fn live_table_dir(conn_dir: &Path, max_flows: u32) -> PathBuf {
    let legacy = conn_dir.join(format!("m{max_flows}"));
    if !conn_table_dir(conn_dir, max_flows).exists() && legacy.exists() { legacy } else { conn_table_dir(conn_dir, max_flows) }
}

/// An LRU table of a release before the bucketed one.
fn is_legacy(table: &Path) -> bool {
    table.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('m'))
}

/// Every connection of one family's table pinned at `path`, as slots.
fn connections<const N: usize, K: aya::Pod>(path: &Path, legacy: bool, key: impl Fn(&K) -> ConnSlot<[u8; N]>) -> Vec<ConnSlot<[u8; N]>>
where
    ConnBucket<[u8; N]>: aya::Pod,
{
    let Ok(m) = MapData::from_pin(path) else { return Vec::new() };
    let mut out = Vec::new();
    if legacy {
        let Ok(h) = HashMap::<MapData, K, ConnValue>::try_from(Map::LruHashMap(m)) else { return out };
        for (k, v) in h.iter().flatten() {
            let mut s = key(&k);
            (s.flags, s.rule, s.last_seen) = (v.flags as u8, v.rule, v.last_seen);
            s.seal = conn_seal(&s.src, &s.dst, s.sport, s.dport, s.pclass, s.rule);
            out.push(s);
        }
    } else {
        let Ok(a) = Array::<MapData, ConnBucket<[u8; N]>>::try_from(Map::Array(m)) else { return out };
        for i in 0..a.len() {
            let Ok(b) = a.get(&i, 0) else { continue };
            out.extend(b.ways.iter().filter(|s| s.sealed()));
        }
    }
    out
}

fn v4_slot(k: &ConnKeyV4) -> ConnSlot<[u8; 4]> {
    ConnSlot { src: k.src, dst: k.dst, sport: k.sport, dport: k.dport, pclass: k.pclass, ..Default::default() }
}

fn v6_slot(k: &ConnKeyV6) -> ConnSlot<[u8; 16]> {
    ConnSlot { src: k.src, dst: k.dst, sport: k.sport, dport: k.dport, pclass: k.pclass, ..Default::default() }
}

/// Copies every connection of the table pinned in `from` (another size, or a
/// release's LRU table) into the loaded, not yet attached, table. Returns how many.
pub(super) fn copy_conn(from: &Path, ebpf: &mut Ebpf) -> Result<usize> {
    let legacy = is_legacy(from);
    let v4 = connections(&from.join(MAP_CONN_V4), legacy, v4_slot);
    let v6 = connections(&from.join(MAP_CONN_V6), legacy, v6_slot);
    Ok(fill(ebpf, MAP_CONN_V4, v4)? + fill(ebpf, MAP_CONN_V6, v6)?)
}

/// Places `conns` in the loaded table `name` as the program would: each in its
/// bucket; a full bucket keeps the connections seen most recently.
fn fill<const N: usize>(ebpf: &mut Ebpf, name: &str, mut conns: Vec<ConnSlot<[u8; N]>>) -> Result<usize>
where
    ConnBucket<[u8; N]>: aya::Pod + Default,
{
    let map = ebpf.map_mut(name).ok_or_else(|| DataplaneError::Other(format!("map {name} missing")))?;
    let mut arr: Array<&mut MapData, ConnBucket<[u8; N]>> = Array::try_from(map).map_err(map_err(format!("open {name}")))?;
    let buckets = arr.len();
    // Most recent first: where a bucket overflows, the oldest are left out.
    conns.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
    let mut table: std::collections::BTreeMap<u32, (ConnBucket<[u8; N]>, usize)> = Default::default();
    let mut n = 0;
    for s in conns {
        let (b, used) = table.entry(conn_bucket(&s.src, &s.dst, s.sport, s.dport, s.pclass, buckets)).or_default();
        if *used < CONN_WAYS {
            b.ways[*used] = s;
            *used += 1;
            n += 1;
        }
    }
    for (i, (b, _)) in table {
        arr.set(i, b, 0).map_err(map_err(format!("write {name}")))?;
    }
    Ok(n)
}

/// The connection table of stateful mode as it stands: counters summed over
/// CPUs, and the entries (live or idle past their timeout) per family.
#[derive(Clone, Debug, Default)]
pub struct ConnReadout {
    /// `CS_*` slots.
    pub stats: Vec<u64>,
    /// Entries not yet idle past their timeout.
    pub live: u64,
    /// Every entry in the tables (idle ones stay until seen again or evicted).
    pub entries: u64,
}

/// Reads the pinned connection table `table` and its counters `stats_path`.
pub(super) fn read_conn(table: &Path, stats_path: &Path, c: &StateConfig) -> Result<ConnReadout> {
    let stats = match MapData::from_pin(stats_path) {
        Ok(m) => {
            let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(m)).map_err(map_err("open CONN_STATS"))?;
            sum_stats(&arr)?
        }
        Err(_) => Vec::new(),
    };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills ts. The program stamps entries with
    // bpf_ktime_get_coarse_ns, i.e. CLOCK_MONOTONIC_COARSE.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let mut out = ConnReadout { stats, ..ConnReadout::default() };
    let legacy = is_legacy(table);
    count(&connections(&table.join(MAP_CONN_V4), legacy, v4_slot), now, c, &mut out);
    count(&connections(&table.join(MAP_CONN_V6), legacy, v6_slot), now, c, &mut out);
    Ok(out)
}

fn count<const N: usize>(conns: &[ConnSlot<[u8; N]>], now: u64, c: &StateConfig, out: &mut ConnReadout) {
    for s in conns {
        out.entries += 1;
        if now.saturating_sub(s.last_seen) <= conn_timeout_s(c, s.pclass, u32::from(s.flags)).saturating_mul(1_000_000_000) {
            out.live += 1;
        }
    }
}

/// The idle timeout of a connection-table entry, seconds (as conn.rs decides it).
fn conn_timeout_s(c: &StateConfig, pclass: u8, flags: u32) -> u64 {
    use egress_common::{ConnTimeout, conn_timeout};
    match conn_timeout(pclass, flags) {
        ConnTimeout::TcpEstablished => c.tcp_established,
        ConnTimeout::TcpClosing => c.tcp_closing,
        ConnTimeout::Udp => c.udp,
        ConnTimeout::Icmp => c.icmp,
    }
}

impl ConnReadout {
    pub fn stat(&self, slot: u32) -> u64 {
        self.stats.get(slot as usize).copied().unwrap_or(0)
    }

    /// Entries pushed out to make room for new connections (each one a new
    /// connection that met a full bucket): every insert is still in the table,
    /// removed as expired, or evicted.
    pub fn evicted(&self) -> u64 {
        use egress_common::{CS_EXPIRED, CS_INSERTED, CS_INSERTED_INBOUND};
        (self.stat(CS_INSERTED) + self.stat(CS_INSERTED_INBOUND)).saturating_sub(self.stat(CS_EXPIRED) + self.entries)
    }
}
