//! Watches the folders of the config and rule files (inotify through `notify`).
//! Folders, not files: editors and config managers write a new file and rename it
//! over the old one, and a watch on the old file would follow the old inode.
//! An event on a watched file (or folder) is reported as its folder, with
//! whether the event ends a write (a close after writing, a rename into place,
//! a removal): the service reloads at once after those and lets others (data
//! written, a file created) settle first. Events on other files of the folder
//! are dropped: an editor's temporary file, written before it is renamed over
//! the rule file, would otherwise cost a reconcile (reading and hashing the
//! rule file, the state) that the rename then waits behind. In a folder where
//! a watched file is a symlink, every event counts: what it points at can
//! change under other names (a Kubernetes ConfigMap swaps its `..data` link).
//! The service still compares digests, so a watched file that did not change
//! costs a read.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A folder where something happened, and whether the event ends a write.
pub type Change = (PathBuf, bool);

#[derive(Default)]
struct Wanted {
    files: BTreeSet<PathBuf>,
    every_event: BTreeSet<PathBuf>,
}

impl Wanted {
    fn wants(&self, p: &Path) -> bool {
        self.files.contains(p) || self.every_event.contains(p) || p.parent().is_some_and(|d| self.every_event.contains(d))
    }
}

/// Whether an event ends a write: the file is complete now.
fn ends_write(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    matches!(kind, EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_))
}

pub struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    tx: UnboundedSender<Change>,
    watched: BTreeSet<PathBuf>,
    /// Whose events are reported: the watched files, and the folders where
    /// any event is (one of their files is a symlink).
    wanted: Arc<Mutex<Wanted>>,
}

impl Watch {
    pub fn new() -> (Watch, UnboundedReceiver<Change>) {
        let (tx, rx) = unbounded_channel();
        let cb_tx = tx.clone();
        let wanted: Arc<Mutex<Wanted>> = Arc::default();
        let cb_wanted = wanted.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
            // Reading a file (ours included: every reconcile reads the rule file) is
            // an access event; reacting to those would loop. A close after
            // writing is one too, and the one that says a write is complete.
            Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) && !ends_write(&ev.kind) => {}
            Ok(ev) => {
                let done = ends_write(&ev.kind);
                let paths: Vec<&PathBuf> = match cb_wanted.lock() {
                    Ok(w) => ev.paths.iter().filter(|p| w.wants(p)).collect(),
                    Err(_) => ev.paths.iter().collect(),
                };
                for p in paths {
                    if let Some(dir) = p.parent() {
                        let _ = cb_tx.send((dir.to_path_buf(), done));
                    }
                }
            }
            Err(e) => tracing::warn!("file watch: {e}"),
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("cannot watch files ({e}); reload with SIGHUP");
                None
            }
        };
        (Watch { watcher, tx, watched: BTreeSet::new(), wanted }, rx)
    }

    /// Watches exactly the folders of `files` (adding new ones, dropping others).
    /// A folder that cannot be watched yet (missing) is tried again on the next call.
    pub fn set(&mut self, files: &[&Path]) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        let want: BTreeSet<PathBuf> = files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        if let Ok(mut w) = self.wanted.lock() {
            w.files = files.iter().map(|f| f.to_path_buf()).collect();
            // The folders themselves (removed, renamed) and those holding a symlink.
            w.every_event = files
                .iter()
                .filter(|f| std::fs::symlink_metadata(f).is_ok_and(|m| m.file_type().is_symlink()))
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect();
            w.files.extend(want.iter().cloned());
        }
        for d in self.watched.difference(&want).cloned().collect::<Vec<_>>() {
            let _ = w.unwatch(&d);
            self.watched.remove(&d);
        }
        for d in want {
            if self.watched.contains(&d) {
                continue;
            }
            match w.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    // Files may have changed while the folder was not watched.
                    let _ = self.tx.send((d.clone(), true));
                    self.watched.insert(d);
                }
                Err(e) => tracing::debug!(dir = %d.display(), "not watched yet: {e}"),
            }
        }
    }
}
