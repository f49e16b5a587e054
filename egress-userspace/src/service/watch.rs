//! Watches the folders of the config and rule files (inotify through `notify`).
//! Folders, not files: editors and config managers write a new file and rename it
//! over the old one, and a watch on the old file would follow the old inode.
//! An event on a watched file (or folder) is reported as its folder, with
//! whether the event ends a write (a close after writing, a rename into place,
//! a removal): the service reloads at once after those and lets others (data
//! written, a file created) settle first. Events on other files of the folder
//! are dropped: an editor's temporary file, written before it is renamed over
//! the rule file, would otherwise cost a reconcile (reading and hashing the
//! rule file, the state) that the rename then waits behind. The service still
//! compares digests, so a watched file that did not change costs a read.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A folder where something happened, and whether the event ends a write.
pub type Change = (PathBuf, bool);

/// Whether an event ends a write: the file is complete now.
fn ends_write(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    matches!(kind, EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_))
}

pub struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    tx: UnboundedSender<Change>,
    watched: BTreeSet<PathBuf>,
    /// The files (and their folders) whose events are reported.
    wanted: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl Watch {
    pub fn new() -> (Watch, UnboundedReceiver<Change>) {
        let (tx, rx) = unbounded_channel();
        let cb_tx = tx.clone();
        let wanted: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let cb_wanted = wanted.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
            // Reading a file (ours included: every reconcile reads the rule file) is
            // an access event; reacting to those would loop. A close after
            // writing is one too, and the one that says a write is complete.
            Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) && !ends_write(&ev.kind) => {}
            Ok(ev) => {
                let done = ends_write(&ev.kind);
                let wanted = cb_wanted.lock().map(|w| w.clone()).unwrap_or_default();
                for p in ev.paths.iter().filter(|p| wanted.contains(*p)) {
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
            *w = files.iter().map(|f| f.to_path_buf()).chain(want.iter().cloned()).collect();
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
