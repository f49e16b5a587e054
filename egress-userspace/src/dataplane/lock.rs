//! Locks (flock(2) on files in the state directory): one attachment's
//! replacements, detach and prune serialised (`attachment_lock`), and one
//! `egress run` per interface (`RunLock`).

use std::{
    fs, io,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use super::{
    DataplaneError, Result, io_err,
    state::{STATE_DIR, ensure_state_dir},
};
use crate::hook::Hook;

/// An flock(2) held for as long as the value lives.
pub struct FileLock {
    _file: fs::File,
}

/// Locks `path` (created if needed). A holder may unlink its lock file; a waiter
/// that then gets the lock on the unlinked inode notices (the path names another
/// inode or none) and tries again, so two holders never coexist.
fn flock(path: &Path, blocking: bool) -> Result<std::result::Result<FileLock, fs::File>> {
    use std::os::unix::fs::MetadataExt as _;
    ensure_state_dir()?;
    loop {
        use std::os::unix::fs::OpenOptionsExt as _;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(format!("open lock {}", path.display())))?;
        let op = if blocking { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(Err(f));
            }
            return Err(io_err(format!("lock {}", path.display()))(e));
        }
        let held = f.metadata().map(|m| m.ino()).ok();
        if held.is_some() && fs::metadata(path).map(|m| m.ino()).ok() == held {
            return Ok(Ok(FileLock { _file: f }));
        }
    }
}

/// Serialises replacements, detach and prune of one attachment.
pub(super) fn attachment_lock(key: &str) -> Result<FileLock> {
    match flock(&Path::new(STATE_DIR).join(format!("{key}.lock")), true)? {
        Ok(l) => Ok(l),
        Err(_) => Err(DataplaneError::Other(format!("lock of {key} not granted"))),
    }
}

/// Held by `egress run` for each interface it manages, keyed by namespace cookie
/// and interface name (the interface may not exist yet), so a second `egress run`
/// for the same interface refuses to start.
pub struct RunLock {
    _lock: FileLock,
    path: PathBuf,
}

impl Drop for RunLock {
    /// Unlinks the lock file while still holding it: a process waiting on the old
    /// inode sees that the path no longer names it and starts over (see [`flock`]).
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl RunLock {
    pub fn acquire(netns_cookie: u64, iface: &str, hook: Hook) -> Result<RunLock> {
        // A cgroup's path as one file name: '%' as "%25", then '/' as '%'.
        let name = if hook == Hook::Cgroup { format!("cgroup{}", iface.replace('%', "%25").replace('/', "%")) } else { iface.to_string() };
        let path = Path::new(STATE_DIR).join(format!("run-{netns_cookie}-{name}{}.lock", hook.key_suffix()));
        match flock(&path, false)? {
            Ok(mut lock) => {
                // Say who holds it, for the message the next one prints.
                let f = &mut lock._file;
                let _ = f.set_len(0);
                let _ = writeln!(f, "{}", std::process::id());
                Ok(RunLock { _lock: lock, path })
            }
            Err(_) => {
                let pid = fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                Err(DataplaneError::Busy(format!(
                    "another `egress run` (pid {}) already manages interface {iface} ({hook}) in this network namespace (lock {})",
                    if pid.is_empty() { "unknown".to_string() } else { pid },
                    path.display()
                )))
            }
        }
    }
}
