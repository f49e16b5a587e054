//! The last state file this process wrote, kept in memory by the file's
//! identity (inode, size, modification time): `egress run` reads its own
//! state before every reload, and parsing a 100k-rule state costs tens of
//! milliseconds before the new rules can take over. A file written by anyone
//! else (an atomic replacement is a new inode) is read from disk as before.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::state::State;

type Identity = (u64, u64, i64, i64);

static LAST: Mutex<Option<(PathBuf, Identity, State)>> = Mutex::new(None);

fn identity(path: &Path) -> Option<Identity> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The state at `path` if it is the one this process last wrote there: a
/// copy (`take` false), or the memo itself (`take`: for a replacement, which
/// writes the next state and so puts one back; a 100k-rule copy is itself
/// tens of milliseconds).
pub(super) fn get(path: &Path, take: bool) -> Option<State> {
    let id = identity(path)?;
    let mut last = LAST.lock().ok()?;
    match last.as_ref() {
        Some((p, i, st)) if p == path && *i == id => {
            if take {
                last.take().map(|(_, _, st)| st)
            } else {
                Some(st.clone())
            }
        }
        _ => None,
    }
}

/// Records `st` as just written to `path` (forgets it when the file cannot be
/// looked at).
pub(super) fn put(path: &Path, st: &State) {
    if let Ok(mut last) = LAST.lock() {
        *last = identity(path).map(|id| (path.to_path_buf(), id, st.clone()));
    }
}
