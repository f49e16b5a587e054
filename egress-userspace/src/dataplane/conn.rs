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
use egress_common::{CONN_TIME_SHIFT, CONN_WAYS, ConnBucket, ConnKey, LruKeyV4, LruKeyV6, LruValue, MAP_CONN_V4, MAP_CONN_V6, conn_place};

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

/// One connection as a table holds it: its key, flags and time (table units).
#[derive(Clone, Copy, Default)]
struct Conn<A> {
    key: ConnKey<A>,
    flags: u8,
    seen: u32,
}

/// CLOCK_MONOTONIC_COARSE, which the program stamps connections with, in the
/// table's units ([`CONN_TIME_SHIFT`]).
fn now_units() -> u32 {
    (super::state::mono_coarse_ns() >> CONN_TIME_SHIFT) as u32
}

/// Every connection of one family's table pinned at `path`.
fn connections<const N: usize, K: aya::Pod>(path: &Path, legacy: bool, key: impl Fn(&K) -> ConnKey<[u8; N]>) -> Vec<Conn<[u8; N]>>
where
    ConnBucket<[u8; N]>: aya::Pod,
{
    let Ok(m) = MapData::from_pin(path) else { return Vec::new() };
    let mut out = Vec::new();
    if legacy {
        let Ok(h) = HashMap::<MapData, K, LruValue>::try_from(Map::LruHashMap(m)) else { return out };
        for (k, v) in h.iter().flatten() {
            let key = ConnKey { rule: v.rule, ..key(&k) };
            out.push(Conn { key, flags: v.flags as u8, seen: (v.last_seen >> CONN_TIME_SHIFT) as u32 });
        }
    } else {
        let Ok(a) = Array::<MapData, ConnBucket<[u8; N]>>::try_from(Map::Array(m)) else { return out };
        for i in 0..a.len() {
            let Ok(b) = a.get(&i, 0) else { continue };
            out.extend((0..CONN_WAYS).filter(|&w| b.holds(w)).map(|w| Conn {
                key: b.ways[w],
                flags: b.head.flags[w],
                seen: b.head.seen[w],
            }));
        }
    }
    out
}

fn v4_key(k: &LruKeyV4) -> ConnKey<[u8; 4]> {
    ConnKey { src: k.src, dst: k.dst, sport: k.sport, dport: k.dport, pclass: k.pclass, ..Default::default() }
}

fn v6_key(k: &LruKeyV6) -> ConnKey<[u8; 16]> {
    ConnKey { src: k.src, dst: k.dst, sport: k.sport, dport: k.dport, pclass: k.pclass, ..Default::default() }
}

/// Copies every connection of the table pinned in `from` (another size, or a
/// release's LRU table) into the loaded, not yet attached, table. Returns how many.
pub(super) fn copy_conn(from: &Path, ebpf: &mut Ebpf) -> Result<usize> {
    let legacy = is_legacy(from);
    let v4 = connections(&from.join(MAP_CONN_V4), legacy, v4_key);
    let v6 = connections(&from.join(MAP_CONN_V6), legacy, v6_key);
    Ok(fill(ebpf, MAP_CONN_V4, v4)? + fill(ebpf, MAP_CONN_V6, v6)?)
}

/// Places `conns` in the loaded table `name` as the program would: each in its
/// bucket; a full bucket keeps the connections seen most recently.
fn fill<const N: usize>(ebpf: &mut Ebpf, name: &str, mut conns: Vec<Conn<[u8; N]>>) -> Result<usize>
where
    ConnBucket<[u8; N]>: aya::Pod + Default,
{
    let map = ebpf.map_mut(name).ok_or_else(|| DataplaneError::Other(format!("map {name} missing")))?;
    let mut arr: Array<&mut MapData, ConnBucket<[u8; N]>> = Array::try_from(map).map_err(map_err(format!("open {name}")))?;
    let buckets = arr.len();
    // Most recent first: where a bucket overflows, the oldest are left out.
    let now = now_units();
    conns.sort_by_key(|c| now.wrapping_sub(c.seen));
    let mut table: std::collections::BTreeMap<u32, (ConnBucket<[u8; N]>, usize)> = Default::default();
    let mut n = 0;
    for c in conns {
        let k = &c.key;
        let (at, tag) = conn_place(&k.src, &k.dst, k.sport, k.dport, k.pclass, buckets);
        let (b, used) = table.entry(at).or_default();
        let w = *used;
        if w < CONN_WAYS {
            b.ways[w] = c.key;
            (b.head.tags[w], b.head.seen[w], b.head.flags[w], b.head.pclass[w]) = (tag, c.seen, c.flags, k.pclass);
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
    let now = now_units();
    let mut out = ConnReadout { stats, ..ConnReadout::default() };
    let legacy = is_legacy(table);
    count(&connections(&table.join(MAP_CONN_V4), legacy, v4_key), now, c, &mut out);
    count(&connections(&table.join(MAP_CONN_V6), legacy, v6_key), now, c, &mut out);
    Ok(out)
}

fn count<const N: usize>(conns: &[Conn<[u8; N]>], now: u32, c: &StateConfig, out: &mut ConnReadout) {
    for s in conns {
        out.entries += 1;
        let idle_ns = u64::from(now.wrapping_sub(s.seen)) << CONN_TIME_SHIFT;
        if idle_ns <= conn_timeout_s(c, s.key.pclass, u32::from(s.flags)).saturating_mul(1_000_000_000) {
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

#[cfg(test)]
mod tests {
    use egress_common::{ConnBucketV4, PCLASS_TCP};

    use super::*;

    fn key(i: u32) -> ConnKey<[u8; 4]> {
        ConnKey {
            src: [192, 0, 2, i as u8],
            dst: (0xc633_6400 | i).to_be_bytes(),
            sport: (i as u16).to_be_bytes(),
            dport: [0, 80],
            pclass: PCLASS_TCP,
            ..Default::default()
        }
    }

    #[test]
    fn a_connection_goes_to_one_bucket_of_any_count_with_a_tag_that_is_never_empty() {
        for buckets in [1, 3, 4, 1000, 16_384, 1 << 20] {
            let mut used = std::collections::HashSet::new();
            for i in 0..2000 {
                let k = key(i);
                let (at, tag) = conn_place(&k.src, &k.dst, k.sport, k.dport, k.pclass, buckets);
                assert!(at < buckets && tag != 0);
                assert_eq!(tag, conn_place(&k.src, &k.dst, k.sport, k.dport, k.pclass, 7).1, "the tag does not depend on the size");
                used.insert(at);
            }
            assert!(used.len() as u32 >= buckets.min(2000) / 2, "{buckets} buckets: spread over {}", used.len());
        }
    }

    #[test]
    fn a_way_holds_a_connection_only_under_its_own_tag() {
        let mut b = ConnBucketV4::default();
        assert!(!(0..CONN_WAYS).any(|w| b.holds(w)), "empty");
        let k = key(7);
        b.ways[2] = k;
        b.head.tags[2] = conn_place(&k.src, &k.dst, k.sport, k.dport, k.pclass, 1).1;
        assert!(b.holds(2) && !b.holds(1));
        // Torn: another CPU's key half written over this one's.
        b.ways[2].dst = key(8).dst;
        assert!(!b.holds(2));
    }
}
