//! What the halves of the loaded rule maps hold, as this process wrote them,
//! so that a hot reload writes only the entries that differ from what its idle
//! half holds (hot.rs): one changed rule rewrites a handful of entries, not
//! the whole rule set.
//!
//! A record names the maps by their EPOCH map's kernel id (unique to one load:
//! ids are not reused while the maps live) and the epoch its half was written
//! for. hot.rs trusts a record only when the kernel agrees that nothing wrote
//! that half since: EPOCH's written-last entry (egress-common's
//! `EPOCH_WRITTEN`) equals the live epoch, so the last write finished and was
//! the one to the live half. Another process's reload, or one that stopped
//! half-way, leaves no record here or breaks that equality: the whole half is
//! then written. A record is taken out before its half is written, so a
//! failed write leaves none behind.

use std::sync::{Mutex, MutexGuard};

use crate::compile::place::Placed;

/// What a half holds.
pub(super) enum Held {
    /// Zeros: a fresh load's half 1.
    Zero,
    /// A placed rule set (and beyond its entries, whatever earlier ones left).
    Set(Box<Placed>),
}

struct Record {
    /// The attachment (state.rs's key): a new load drops its older records.
    key: String,
    /// The EPOCH map's id.
    maps: u32,
    /// The epoch whose half this is.
    epoch: u32,
    held: Held,
}

static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

fn records() -> MutexGuard<'static, Vec<Record>> {
    RECORDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A load of attachment `key` (EPOCH map `maps`, EPOCH 0): half 0 holds
/// `placed`, half 1 zeros (the epoch before 0).
pub(super) fn loaded(key: &str, maps: u32, placed: Placed) {
    let mut r = records();
    r.retain(|x| x.key != key);
    r.push(Record { key: key.to_string(), maps, epoch: 0, held: Held::Set(Box::new(placed)) });
    r.push(Record { key: key.to_string(), maps, epoch: u32::MAX, held: Held::Zero });
}

/// Takes out what the half of `epoch` in maps `maps` holds, if this process wrote it.
pub(super) fn take(maps: u32, epoch: u32) -> Option<Held> {
    let mut r = records();
    let i = r.iter().position(|x| x.maps == maps && x.epoch == epoch)?;
    Some(r.swap_remove(i).held)
}

/// The half of `epoch` in maps `maps` of `key` now holds `placed`.
pub(super) fn wrote(key: &str, maps: u32, epoch: u32, placed: Placed) {
    let mut r = records();
    // The other half's record stays; older loads' records go.
    r.retain(|x| x.key != key || (x.maps == maps && (x.epoch & 1) != (epoch & 1)));
    r.push(Record { key: key.to_string(), maps, epoch, held: Held::Set(Box::new(placed)) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_the_halves() {
        let key = "idle-test";
        loaded(key, 7, Placed::default());
        assert!(matches!(take(7, u32::MAX), Some(Held::Zero)));
        assert!(take(7, u32::MAX).is_none(), "taken out");
        wrote(key, 7, 1, Placed::default());
        assert!(matches!(take(7, 0), Some(Held::Set(_))));
        wrote(key, 7, 2, Placed::default());
        assert!(matches!(take(7, 1), Some(Held::Set(_))));
        wrote(key, 7, 3, Placed::default());
        // A new load of the same attachment forgets the old maps.
        loaded(key, 8, Placed::default());
        assert!(take(7, 2).is_none() && take(7, 3).is_none());
        assert!(take(8, 0).is_some());
    }
}
