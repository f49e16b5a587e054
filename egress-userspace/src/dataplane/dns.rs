//! Rules by domain name from user space: the pinned learned-address tables of
//! an attachment, the patterns written into each generation, the sweep of
//! what a removed pattern taught, and the readout behind `egress dns` and the
//! counters' DNS section. The program side is egress-ebpf dns.rs.

use std::{
    collections::HashSet,
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
};
use egress_common::{
    DNS_WAYS, DnsClass, DnsName, GLOBAL_DNS_BUCKET_MASK, GLOBAL_DNS_KEY0, GLOBAL_DNS_KEY1, GLOBAL_DNS_MAX_TTL, GLOBAL_DNS_MIN_TTL,
    GLOBAL_DNS_ON, LearnBucket, MAP_DNS_CLASSES, MAP_DNS_LEARN_V4, MAP_DNS_LEARN_V6, MAP_DNS_NAMES, MAP_DNS_PATTERNS, MAP_DNS_QUERIES,
    MAP_DNS_RESOLVERS, MAP_DNS_STATS, PAT_EXACT, PAT_WILD, PatKey, PatValue, ResolverKey, dns_name_hash, learn_seal,
};

use super::{DataplaneError, Result, load::sum_stats, map_err};
use crate::{compile::FqdnClass, rules::DnsConfig};

/// Where an attachment's learned tables of `buckets` buckets are pinned
/// (`KEY/dns/bN/`), beside the queries, names and counters (`KEY/dns/`).
pub(super) fn table_dir(dns_dir: &Path, buckets: u32) -> PathBuf {
    // The bucket's size too: a table of another layout is another table.
    dns_dir.join(format!("b{buckets}-{}", size_of::<LearnBucket>()))
}

/// Buckets per family for `max_addresses` (a power of two).
pub fn buckets(max_addresses: u32) -> u32 {
    max_addresses.div_ceil(DNS_WAYS as u32).next_power_of_two()
}

/// What the loader needs for rules by name.
#[derive(Clone, Debug)]
pub struct DnsLoad {
    pub config: DnsConfig,
    /// The attachment's hash key (kept in its state file).
    pub key: [u64; 2],
    /// `KEY/dns`: where the shared maps are pinned.
    pub dir: PathBuf,
}

/// A fresh hash key.
pub fn new_key() -> Result<[u64; 2]> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|source| DataplaneError::Io { op: "read /dev/urandom for the DNS hash key".into(), source })?;
    let (a, c) = b.split_at(8);
    Ok([u64::from_ne_bytes(a.try_into().unwrap_or_default()), u64::from_ne_bytes(c.try_into().unwrap_or_default())])
}

/// Sets the globals, sizes and pins of the DNS maps on a loader; the pin
/// paths live in `paths` (the loader borrows them).
pub(super) fn configure<'a>(
    loader: &mut EbpfLoader<'a>,
    d: Option<&'a DnsLoad>,
    globals: &'a DnsGlobals,
    paths: &'a [PathBuf; 5],
    patterns: u32,
) {
    loader
        .override_global(GLOBAL_DNS_ON, &globals.on, true)
        .override_global(GLOBAL_DNS_KEY0, &globals.key[0], true)
        .override_global(GLOBAL_DNS_KEY1, &globals.key[1], true)
        .override_global(GLOBAL_DNS_MIN_TTL, &globals.ttl[0], true)
        .override_global(GLOBAL_DNS_MAX_TTL, &globals.ttl[1], true)
        .override_global(GLOBAL_DNS_BUCKET_MASK, &globals.mask, true)
        .map_max_entries(MAP_DNS_PATTERNS, patterns.max(1))
        .map_max_entries(MAP_DNS_CLASSES, (patterns + 1).max(1));
    let Some(d) = d else { return };
    let b = buckets(d.config.max_addresses);
    loader
        .map_max_entries(MAP_DNS_LEARN_V4, b)
        .map_max_entries(MAP_DNS_LEARN_V6, b)
        .map_max_entries(MAP_DNS_NAMES, d.config.max_addresses)
        .map_pin_path(MAP_DNS_LEARN_V4, paths[0].as_path())
        .map_pin_path(MAP_DNS_LEARN_V6, paths[1].as_path())
        .map_pin_path(MAP_DNS_QUERIES, paths[2].as_path())
        .map_pin_path(MAP_DNS_NAMES, paths[3].as_path())
        .map_pin_path(MAP_DNS_STATS, paths[4].as_path());
}

/// The DNS globals as the program reads them.
pub(super) struct DnsGlobals {
    on: u32,
    key: [u64; 2],
    ttl: [u64; 2],
    mask: u32,
}

impl DnsGlobals {
    pub(super) fn new(d: Option<&DnsLoad>) -> DnsGlobals {
        match d {
            None => DnsGlobals { on: 0, key: [0; 2], ttl: [1, 1], mask: 0 },
            Some(d) => {
                DnsGlobals { on: 1, key: d.key, ttl: [d.config.min_ttl, d.config.max_ttl], mask: buckets(d.config.max_addresses) - 1 }
            }
        }
    }
}

/// The pin paths of the shared maps, in [`configure`]'s order.
pub(super) fn pin_paths(d: Option<&DnsLoad>) -> Result<[PathBuf; 5]> {
    let Some(d) = d else { return Ok(Default::default()) };
    let t = table_dir(&d.dir, buckets(d.config.max_addresses));
    super::state::private_dir(&d.dir)?;
    super::state::private_dir(&t)?;
    Ok([
        t.join(MAP_DNS_LEARN_V4),
        t.join(MAP_DNS_LEARN_V6),
        d.dir.join(MAP_DNS_QUERIES),
        d.dir.join(MAP_DNS_NAMES),
        d.dir.join(MAP_DNS_STATS),
    ])
}

/// The labels of a canonical pattern and its kind.
fn pattern_key(p: &str, key: [u64; 2]) -> PatKey {
    let (kind, name) = match p.strip_prefix("*.") {
        Some(rest) => (PAT_WILD, rest),
        None => (PAT_EXACT, p),
    };
    PatKey { hash: dns_name_hash(name.split('.').map(str::as_bytes), key[0], key[1]), kind, _pad: 0 }
}

/// Writes the patterns, classes and resolvers of a rule set into a fresh load.
pub(super) fn fill(ebpf: &mut Ebpf, fqdn: &[FqdnClass], d: &DnsLoad) -> Result<()> {
    {
        let m = ebpf.map_mut(MAP_DNS_PATTERNS).ok_or_else(|| DataplaneError::Other("no DNS_PATTERNS map".into()))?;
        let mut pats: HashMap<&mut MapData, PatKey, PatValue> = HashMap::try_from(m).map_err(map_err("open DNS_PATTERNS"))?;
        for f in fqdn.iter().filter(|f| !f.pattern.is_empty()) {
            let v = PatValue { id: f.id, first_rule: f.first_rule, first_action: f.first_action };
            pats.insert(pattern_key(&f.pattern, d.key), v, 0).map_err(map_err("write DNS_PATTERNS"))?;
        }
    }
    {
        let m = ebpf.map_mut(MAP_DNS_CLASSES).ok_or_else(|| DataplaneError::Other("no DNS_CLASSES map".into()))?;
        let mut classes: HashMap<&mut MapData, u64, DnsClass> = HashMap::try_from(m).map_err(map_err("open DNS_CLASSES"))?;
        for f in fqdn {
            classes.insert(f.id, f.class, 0).map_err(map_err("write DNS_CLASSES"))?;
        }
    }
    let m = ebpf.map_mut(MAP_DNS_RESOLVERS).ok_or_else(|| DataplaneError::Other("no DNS_RESOLVERS map".into()))?;
    let mut res: HashMap<&mut MapData, ResolverKey, u32> = HashMap::try_from(m).map_err(map_err("open DNS_RESOLVERS"))?;
    for a in &d.config.resolvers {
        res.insert(resolver_key(a), 1, 0).map_err(map_err("write DNS_RESOLVERS"))?;
    }
    Ok(())
}

fn resolver_key(a: &IpAddr) -> ResolverKey {
    let mut addr = [0u8; 16];
    match a {
        IpAddr::V4(v) => addr[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => addr = v.octets(),
    }
    ResolverKey { addr, v6: a.is_ipv6() as u32 }
}

fn open_learn(path: &Path) -> Option<Array<MapData, LearnBucket>> {
    Array::try_from(Map::Array(MapData::from_pin(path).ok()?)).ok()
}

/// Clears, in the pinned tables under `table`, every way learned for a
/// pattern not in `keep` (its last rule is gone). Returns how many.
pub(super) fn sweep(table: &Path, keep: &HashSet<u64>) -> Result<usize> {
    let mut n = 0;
    for name in [MAP_DNS_LEARN_V4, MAP_DNS_LEARN_V6] {
        let Some(mut arr) = open_learn(&table.join(name)) else { continue };
        for i in 0..arr.len() {
            let Ok(mut b) = arr.get(&i, 0) else { continue };
            let mut changed = false;
            for w in b.ways.iter_mut() {
                if w.expires != 0 && !keep.contains(&w.pattern) {
                    *w = Default::default();
                    changed = true;
                    n += 1;
                }
            }
            if changed {
                // Cached verdicts that relied on the swept ways go stale.
                b.epoch = b.epoch.wrapping_add(1);
                arr.set(i, b, 0).map_err(map_err(format!("clear {name}")))?;
            }
        }
    }
    Ok(n)
}

/// One learned address as `egress dns` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The question name it was learned from (dotted), or "?" when the names
    /// table no longer holds it.
    pub name: String,
    pub address: IpAddr,
    /// The pattern id (the caller maps it back to the pattern text).
    pub pattern: u64,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// What the DNS tables of an attachment hold: live learned addresses and the counters.
#[derive(Clone, Debug, Default)]
pub struct DnsReadout {
    pub learned: Vec<Learned>,
    /// `DS_*` slots, summed over CPUs.
    pub stats: Vec<u64>,
}

/// A wire-format name -> dotted text.
pub fn wire_to_text(wire: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < wire.len() && wire[i] != 0 && wire[i] < 64 {
        let n = wire[i] as usize;
        let end = (i + 1 + n).min(wire.len());
        if !out.is_empty() {
            out.push(b'.');
        }
        out.extend_from_slice(&wire[i + 1..end]);
        i = end;
    }
    out.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

/// Reads the DNS maps pinned under `dir` with tables of `buckets` buckets.
pub(super) fn read(dir: &Path, buckets: u32) -> Result<DnsReadout> {
    let mut out = DnsReadout::default();
    if let Ok(m) = MapData::from_pin(dir.join(MAP_DNS_STATS)) {
        let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(m)).map_err(map_err("open DNS_STATS"))?;
        out.stats = sum_stats(&arr)?;
    }
    let names: Option<HashMap<MapData, u64, DnsName>> =
        MapData::from_pin(dir.join(MAP_DNS_NAMES)).ok().and_then(|m| HashMap::try_from(Map::LruHashMap(m)).ok());
    let now = super::state::mono_coarse_ns();
    let t = table_dir(dir, buckets);
    for (name, v6) in [(MAP_DNS_LEARN_V4, false), (MAP_DNS_LEARN_V6, true)] {
        let Some(arr) = open_learn(&t.join(name)) else { continue };
        for i in 0..arr.len() {
            let Ok(b) = arr.get(&i, 0) else { continue };
            for w in b.ways.iter() {
                if w.expires <= now || w.seal != learn_seal(&w.addr, w.expires, w.pattern, w.name) {
                    continue;
                }
                let address = if v6 { IpAddr::from(w.addr) } else { IpAddr::from([w.addr[0], w.addr[1], w.addr[2], w.addr[3]]) };
                let qname = names
                    .as_ref()
                    .and_then(|n| n.get(&w.name, 0).ok())
                    .map(|n| wire_to_text(&n.wire[..(n.len as usize).min(256)]))
                    .unwrap_or_else(|| "?".into());
                out.learned.push(Learned {
                    name: qname,
                    address,
                    pattern: w.pattern,
                    expires_in: (w.expires - now).div_ceil(1_000_000_000),
                });
            }
        }
    }
    out.learned.sort_by(|a, b| (&a.name, a.address, a.pattern).cmp(&(&b.name, b.address, b.pattern)));
    Ok(out)
}

/// Removes the pins of a table size no longer in use.
pub(super) fn remove_table(dir: &Path, buckets: u32) {
    let _ = std::fs::remove_dir_all(table_dir(dir, buckets));
}
