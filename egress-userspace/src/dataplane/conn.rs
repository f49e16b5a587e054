//! Stateful mode's connection table from user space: where it is pinned, how a
//! resized table takes the live connections over, and what `egress counters`
//! reports about it. The table itself is created and pinned by the loader
//! (load.rs) and filled by the program (egress-ebpf conn.rs).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray},
};
use egress_common::{ConnKeyV4, ConnKeyV6, ConnValue, MAP_CONN_V4, MAP_CONN_V6};

use super::{DataplaneError, Result, load::sum_stats, map_err};
use crate::rules::StateConfig;

/// Where a connection table of `max_flows` entries is pinned under `conn_dir`
/// (the size is part of the path: a resized table is a new table).
pub(super) fn conn_table_dir(conn_dir: &Path, max_flows: u32) -> PathBuf {
    conn_dir.join(format!("m{max_flows}"))
}

/// Copies every entry of the connection table pinned in `from` (a table of
/// another size) into the loaded, not yet attached, table. Returns how many.
pub(super) fn copy_conn(from: &Path, ebpf: &mut Ebpf) -> Result<usize> {
    Ok(copy_table::<ConnKeyV4>(&from.join(MAP_CONN_V4), ebpf, MAP_CONN_V4)?
        + copy_table::<ConnKeyV6>(&from.join(MAP_CONN_V6), ebpf, MAP_CONN_V6)?)
}

fn copy_table<K: aya::Pod>(path: &Path, ebpf: &mut Ebpf, name: &str) -> Result<usize> {
    let Ok(old) = MapData::from_pin(path) else {
        return Ok(0);
    };
    let old: HashMap<MapData, K, ConnValue> =
        HashMap::try_from(Map::LruHashMap(old)).map_err(map_err(format!("open {}", path.display())))?;
    let map = ebpf.map_mut(name).ok_or_else(|| DataplaneError::Other(format!("map {name} missing")))?;
    let mut new: HashMap<&mut MapData, K, ConnValue> = HashMap::try_from(map).map_err(map_err(format!("open {name}")))?;
    let mut n = 0;
    for item in old.iter() {
        let Ok((k, v)) = item else { continue };
        // A full new table (it shrank) evicts the oldest: fine.
        if new.insert(k, v, 0).is_ok() {
            n += 1;
        }
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
    count_table::<ConnKeyV4>(&table.join(MAP_CONN_V4), now, c, &mut out, |k| k.pclass);
    count_table::<ConnKeyV6>(&table.join(MAP_CONN_V6), now, c, &mut out, |k| k.pclass);
    Ok(out)
}

fn count_table<K: aya::Pod>(path: &Path, now: u64, c: &StateConfig, out: &mut ConnReadout, pclass: impl Fn(&K) -> u8) {
    let Ok(m) = MapData::from_pin(path) else { return };
    let Ok(h) = HashMap::<MapData, K, ConnValue>::try_from(Map::LruHashMap(m)) else { return };
    for (k, v) in h.iter().flatten() {
        out.entries += 1;
        if now.saturating_sub(v.last_seen) <= conn_timeout_s(c, pclass(&k), v.flags).saturating_mul(1_000_000_000) {
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

    /// Entries the LRU pushed out to make room for new connections (each one a new
    /// connection that met a full table): every insert is still in the table,
    /// removed as expired, or evicted.
    pub fn evicted(&self) -> u64 {
        use egress_common::{CS_EXPIRED, CS_INSERTED, CS_INSERTED_INBOUND};
        (self.stat(CS_INSERTED) + self.stat(CS_INSERTED_INBOUND)).saturating_sub(self.stat(CS_EXPIRED) + self.entries)
    }
}
