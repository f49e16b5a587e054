//! Named address sets (`[[set]]` in a rule file): from a file of addresses,
//! CIDRs and ranges (`netset.rs`), or the networks of countries in a MaxMind DB
//! (`geoip.rs`). Pure: the bytes come through a [`Loader`], which the caller
//! provides (`input::FsLoader` reads the files, with the size cap and the owner
//! check); everything here is parsing, merging and lookup.

pub mod geoip;
pub mod netset;

use ipnet::IpNet;

/// Most entries a set may hold (after ranges are split into CIDRs, before
/// equal and contained entries are merged).
pub const MAX_SET_ENTRIES: usize = 1_000_000;

/// Where a set's entries come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetSource {
    /// A set file, as shown in messages (resolved against the rule file's folder).
    File(String),
    /// Countries (ISO 3166-1 alpha-2, upper case) from the `[geoip]` database.
    Country { codes: Vec<String>, database: String },
}

/// A loaded set: its entries merged (equal and contained entries dropped), in
/// address order, IPv4 first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// Line of the set's `[[set]]` header in the rule file.
    pub line: usize,
    pub source: SetSource,
    pub entries: Vec<IpNet>,
    /// Per entry: its line in the set file, or the index of its country in
    /// `SetSource::Country::codes`.
    pub origins: Vec<u32>,
    /// Entries read before merging.
    pub read: usize,
}

impl Set {
    /// The entry holding `addr` and where it came from ("blocklist.netset:12",
    /// "country KP"), if any.
    pub fn entry_of(&self, addr: std::net::IpAddr) -> Option<(IpNet, String)> {
        // Merged entries are disjoint and sorted: the candidate is the last
        // entry that starts at or before the address.
        let key = |n: &IpNet| (n.addr().is_ipv6(), n.network());
        let at = self.entries.partition_point(|n| key(n) <= (addr.is_ipv6(), addr));
        let k = at.checked_sub(1)?;
        let n = self.entries[k];
        n.contains(&addr).then(|| (n, self.origin(k)))
    }

    /// Where entry `k` came from.
    pub fn origin(&self, k: usize) -> String {
        match &self.source {
            SetSource::File(f) => format!("{f}:{}", self.origins[k]),
            SetSource::Country { codes, .. } => format!("country {}", codes.get(self.origins[k] as usize).map_or("?", |c| c.as_str())),
        }
    }

    /// "file blocklist.netset" / "countries KP, IR (GeoLite2-Country.mmdb)".
    pub fn describe(&self) -> String {
        match &self.source {
            SetSource::File(f) => format!("file {f}"),
            SetSource::Country { codes, database } => {
                format!("{} {} ({database})", if codes.len() == 1 { "country" } else { "countries" }, codes.join(", "))
            }
        }
    }

    /// `egress check`'s line for the set: its size after merging.
    pub fn summary(&self) -> String {
        let (v4, v6) = self.family_counts();
        let merged =
            if self.read != self.entries.len() { format!(" ({} read, equal or contained ones merged)", self.read) } else { String::new() };
        format!("set @{}: {} entries, {v4} IPv4 + {v6} IPv6{merged}, from {}", self.name, self.entries.len(), self.describe())
    }

    /// `egress check --json`'s object for the set.
    pub fn json(&self) -> serde_json::Value {
        let (v4, v6) = self.family_counts();
        let (file, countries, database) = match &self.source {
            SetSource::File(f) => (Some(f.as_str()), None, None),
            SetSource::Country { codes, database } => (None, Some(codes), Some(database.as_str())),
        };
        serde_json::json!({"name": self.name, "line": self.line, "entries": self.entries.len(), "ipv4": v4, "ipv6": v6,
                           "read": self.read, "file": file, "country": countries, "database": database})
    }

    /// IPv4 and IPv6 entries.
    pub fn family_counts(&self) -> (usize, usize) {
        let v6 = self.entries.iter().filter(|n| n.addr().is_ipv6()).count();
        (self.entries.len() - v6, v6)
    }
}

/// Sorts entries and drops those equal to or contained in another (keeping the
/// containing entry and its origin).
pub fn merge(mut entries: Vec<(IpNet, u32)>) -> (Vec<IpNet>, Vec<u32>) {
    // Address order with shorter prefixes first: an entry's containers come
    // before it, and every entry after a container until the first one outside
    // it lies inside it.
    entries.sort_unstable_by_key(|(n, o)| (n.addr().is_ipv6(), n.network(), n.prefix_len(), *o));
    let (mut nets, mut origins): (Vec<IpNet>, Vec<u32>) = (Vec::with_capacity(entries.len()), Vec::with_capacity(entries.len()));
    for (n, o) in entries {
        if nets.last().is_some_and(|k: &IpNet| k.contains(&n)) {
            continue;
        }
        nets.push(n);
        origins.push(o);
    }
    (nets, origins)
}

/// The I/O a rule file with sets needs, provided by the caller so that the
/// rule parser stays pure. Paths are as written in the rule file; a relative
/// one is relative to the rule file's folder (the loader knows it). Errors are
/// complete messages naming the file.
pub trait Loader: Sync {
    /// A set file's text, and the path to show for it.
    fn set_file(&self, path: &str) -> Result<(String, String), String>;
    /// A MaxMind DB's bytes, and the path to show for it.
    fn database(&self, path: &str) -> Result<(String, Vec<u8>), String>;
}

/// The loader of callers that read no files (fuzzing, tests of plain rule
/// files): a set with a file or countries is an error.
pub struct NoFiles;

impl Loader for NoFiles {
    fn set_file(&self, path: &str) -> Result<(String, String), String> {
        Err(format!("{path}: set files are not read here"))
    }
    fn database(&self, path: &str) -> Result<(String, Vec<u8>), String> {
        Err(format!("{path}: GeoIP databases are not read here"))
    }
}

/// A loader over files held in memory (tests, the fuzzer): path -> text or bytes.
#[derive(Default)]
pub struct InMemory(pub std::collections::HashMap<String, Vec<u8>>);

impl Loader for InMemory {
    fn set_file(&self, path: &str) -> Result<(String, String), String> {
        let b = self.0.get(path).ok_or_else(|| format!("read set file {path}: No such file or directory"))?;
        Ok((path.to_string(), String::from_utf8(b.clone()).map_err(|_| format!("{path}: not UTF-8 text"))?))
    }
    fn database(&self, path: &str) -> Result<(String, Vec<u8>), String> {
        let b = self.0.get(path).ok_or_else(|| format!("read GeoIP database {path}: No such file or directory"))?;
        Ok((path.to_string(), b.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn merge_drops_equal_and_contained_entries() {
        let (nets, origins) = merge(vec![
            (n("10.1.0.0/16"), 4),
            (n("10.0.0.0/8"), 2),
            (n("10.0.0.0/8"), 9),
            (n("11.0.0.1/32"), 5),
            (n("2001:db8::/32"), 6),
            (n("2001:db8:1::/48"), 1),
            (n("9.255.255.255/32"), 7),
            (n("11.0.0.0/31"), 8),
        ]);
        assert_eq!(nets, vec![n("9.255.255.255/32"), n("10.0.0.0/8"), n("11.0.0.0/31"), n("2001:db8::/32")]);
        assert_eq!(origins, vec![7, 2, 8, 6]);
        let set = Set { name: "s".into(), line: 1, source: SetSource::File("s.netset".into()), entries: nets, origins, read: 8 };
        assert_eq!(set.entry_of("10.200.0.1".parse().unwrap()), Some((n("10.0.0.0/8"), "s.netset:2".into())));
        assert_eq!(set.entry_of("11.0.0.1".parse().unwrap()), Some((n("11.0.0.0/31"), "s.netset:8".into())));
        assert_eq!(set.entry_of("11.0.0.2".parse().unwrap()), None);
        assert_eq!(set.entry_of("9.255.255.254".parse().unwrap()), None);
        assert_eq!(set.entry_of("2001:db8:ffff::1".parse().unwrap()).map(|e| e.1), Some("s.netset:6".into()));
        assert_eq!(set.entry_of("::1".parse().unwrap()), None);
        assert_eq!(set.family_counts(), (3, 1));
    }
}
