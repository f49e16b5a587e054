//! Reading what users hand in (rule files, the service's config, CloudStack
//! exports) with a size cap, so that no input can make egress read forever or
//! hold gigabytes: a regular file larger than the cap is refused from its size
//! before a byte is read; a pipe or device (`--rules /dev/stdin`, `/dev/zero`)
//! is read up to the cap and refused past it. Lines are capped too: a file of
//! one very long line is refused without being parsed. And the one way egress
//! replaces a file it writes (`write_atomically`).

use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

/// The default cap: 64 MiB, several times the largest legal rule file (262,144
/// rules of about 100 bytes each).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 << 20;
/// The longest line accepted: 4 MiB (a rule listing the most CIDRs a list may
/// hold, 65,536 IPv6 prefixes, on one line stays below).
pub const MAX_LINE_LEN: usize = 4 << 20;

static MAX_FILE_SIZE: AtomicU64 = AtomicU64::new(DEFAULT_MAX_FILE_SIZE);
static ALLOW_INSECURE: AtomicBool = AtomicBool::new(false);

/// `--allow-insecure-files`: files and the state directory that others may
/// write are warned about instead of refused.
pub fn set_allow_insecure(yes: bool) {
    ALLOW_INSECURE.store(yes, Ordering::Relaxed);
}

pub fn allow_insecure() -> bool {
    ALLOW_INSECURE.load(Ordering::Relaxed)
}

/// Why a file or directory is open to users other than root: owned by another
/// user, or writable by its group or everyone. None: only root can change it.
pub fn insecure(meta: &fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt as _;
    if meta.uid() != 0 {
        Some("owned by a user other than root")
    } else if meta.mode() & 0o022 != 0 {
        Some("writable by its group or by everyone")
    } else {
        None
    }
}

/// Run as root, egress enforces what a rule file says: a file (or the folder
/// holding it) that another user can write would let that user decide. Such a
/// file is refused (or warned about, with `--allow-insecure-files`). Pipes and
/// devices are not checked; a folder with the sticky bit (/tmp) protects the
/// files of others.
fn check_owner(path: &Path, meta: &fs::Metadata, what: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !meta.is_file() {
        return Ok(());
    }
    let shown = path.display();
    let mut why = insecure(meta).map(|w| format!("{shown} is {w} (mode {:04o}, uid {})", meta.mode() & 0o7777, meta.uid()));
    if why.is_none()
        && let Some(dir) = fs::canonicalize(path).ok().and_then(|p| p.parent().map(Path::to_path_buf))
        && let Ok(dm) = fs::metadata(&dir)
        && dm.mode() & 0o1000 == 0
        && (dm.mode() & 0o022 != 0 || (dm.uid() != 0 && dm.uid() != meta.uid()))
    {
        why =
            Some(format!("{shown} is in {}, which others may write to (mode {:04o}, uid {})", dir.display(), dm.mode() & 0o7777, dm.uid()));
    }
    let Some(why) = why else { return Ok(()) };
    if allow_insecure() {
        tracing::warn!("{why}; used anyway (--allow-insecure-files)");
        eprintln!("warning: {why}; used anyway (--allow-insecure-files)");
        return Ok(());
    }
    Err(format!(
        "{why}: a {what} that others can change decides what egress (running as root) enforces; `chown root` it and `chmod go-w` it (and its folder), or pass --allow-insecure-files"
    ))
}

/// Sets the cap for this process (`--max-file-size`).
pub fn set_max_file_size(bytes: u64) {
    MAX_FILE_SIZE.store(bytes, Ordering::Relaxed);
}

/// The cap in force.
pub fn max_file_size() -> u64 {
    MAX_FILE_SIZE.load(Ordering::Relaxed)
}

/// "64 MiB", "300 MB" style sizes for messages.
pub fn show_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

/// Parses a size: bytes, or with a K/M/G suffix (KiB, MiB, GiB; "64M", "1GiB").
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (bytes, or a number with K, M or G: 64M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{s}' is not a size: unknown unit '{unit}' (use K, M or G)")),
    };
    let v = n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("'{s}' is too large"))?;
    if v == 0 {
        return Err("a size of 0 would refuse every file".into());
    }
    Ok(v)
}

/// Reads a file of at most the cap in force; `what` names it in messages
/// ("rule file"). Errors are complete messages naming the file.
pub fn read_capped(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    read_with_cap(path, what, max_file_size())
}

/// [`read_capped`] as UTF-8 text with lines no longer than [`MAX_LINE_LEN`].
pub fn read_text(path: &Path, what: &str) -> Result<String, String> {
    let bytes = read_capped(path, what)?;
    text_of(path, bytes)
}

/// Checks bytes read with [`read_capped`]: UTF-8, and no line past [`MAX_LINE_LEN`].
pub fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String, String> {
    let shown = path.display();
    if let Some((line, len)) = long_line(&bytes) {
        return Err(format!(
            "{shown}:{line}: a line of {} bytes, longer than the {} a line may be (is this the right file?)",
            len,
            show_size(MAX_LINE_LEN as u64)
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        format!("{shown}: not UTF-8 text (invalid byte at offset {at})")
    })
}

/// The first line longer than the limit: (1-based line number, its length).
fn long_line(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut start = 0;
    for (i, at) in newlines(bytes).chain(std::iter::once(bytes.len())).enumerate() {
        if at - start > MAX_LINE_LEN {
            return Some((i + 1, at - start));
        }
        start = at + 1;
    }
    None
}

fn newlines(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    memchr::memchr_iter(b'\n', bytes)
}

fn read_with_cap(path: &Path, what: &str, cap: u64) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let too_big =
        |size: String| format!("{shown}: {size}, more than the {} a {what} may be (--max-file-size raises the limit)", show_size(cap));
    let file = fs::File::open(path).map_err(|e| format!("read {what} {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("read {what} {shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("read {what} {shown}: a directory, not a file"));
    }
    check_owner(path, &meta, what)?;
    if meta.is_file() && meta.len() > cap {
        return Err(too_big(show_size(meta.len())));
    }
    let mut buf = Vec::with_capacity(if meta.is_file() { meta.len() as usize } else { 64 << 10 });
    file.take(cap + 1).read_to_end(&mut buf).map_err(|e| format!("read {what} {shown}: {e}"))?;
    if buf.len() as u64 > cap {
        return Err(too_big(format!("more than {} read", show_size(cap))));
    }
    Ok(buf)
}

/// The least cap for a GeoIP database (a City database is ~70 MB, larger than
/// any rule file should be).
const MIN_DATABASE_CAP: u64 = 512 << 20;

/// Reads the files a rule file names (`[[set]]` files, the `[geoip]`
/// database): a relative path is relative to the rule file's folder. Each is
/// read with the size cap and, as root, the owner check of rule files; what was
/// read is recorded (path, digest of its bytes) for the digest of everything a
/// rule set was built from, and for `egress run` to watch.
pub struct FsLoader {
    base: std::path::PathBuf,
    /// Each file tried: its path and, once read, the digest of its bytes.
    read: std::sync::Mutex<Vec<(std::path::PathBuf, Option<String>)>>,
}

impl FsLoader {
    /// For the rule file at `rules` (a pipe or device: relative to the working folder).
    pub fn for_rules(rules: &Path) -> FsLoader {
        let base = match fs::metadata(rules) {
            Ok(m) if m.is_file() => rules.parent().map(Path::to_path_buf).unwrap_or_default(),
            _ => std::path::PathBuf::new(),
        };
        FsLoader { base, read: Default::default() }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        let p = Path::new(p);
        if p.is_absolute() || self.base.as_os_str().is_empty() { p.to_path_buf() } else { self.base.join(p) }
    }

    fn record(&self, path: &Path, bytes: Option<&[u8]>) {
        if let Ok(mut r) = self.read.lock() {
            r.push((path.to_path_buf(), bytes.map(crate::digest)));
        }
    }

    /// The files tried, in order, with the digests of the bytes read (None:
    /// it could not be read).
    /// The digest of a rule set built from the rule file's `bytes` and the
    /// files read through this loader ([`inputs_digest`]).
    pub fn digest(&self, rules: &[u8]) -> String {
        self.digest_of(&crate::digest(rules))
    }

    /// [`FsLoader::digest`] with the rule file's own digest already made.
    pub fn digest_of(&self, rules_sha: &str) -> String {
        let read: Vec<(std::path::PathBuf, String)> = self.inputs().into_iter().filter_map(|(p, d)| Some((p, d?))).collect();
        inputs_digest(rules_sha, &read)
    }

    /// A file read twice (a large rule file's chunked parse gave way to the
    /// one-piece parse) is listed once, with what was read last.
    pub fn inputs(&self) -> Vec<(std::path::PathBuf, Option<String>)> {
        let all = self.read.lock().map(|r| r.clone()).unwrap_or_default();
        let mut out: Vec<(std::path::PathBuf, Option<String>)> = Vec::with_capacity(all.len());
        for (p, d) in all {
            match out.iter_mut().find(|(q, _)| *q == p) {
                Some(e) => e.1 = d,
                None => out.push((p, d)),
            }
        }
        out
    }
}

impl crate::sets::Loader for FsLoader {
    fn set_file(&self, path: &str) -> Result<(String, String), String> {
        let p = self.path(path);
        let bytes = read_capped(&p, "set file");
        self.record(&p, bytes.as_deref().ok());
        let bytes = bytes?;
        Ok((p.display().to_string(), text_of(&p, bytes)?))
    }
    fn database(&self, path: &str) -> Result<(String, Vec<u8>), String> {
        let p = self.path(path);
        let bytes = read_with_cap(&p, "GeoIP database", max_file_size().max(MIN_DATABASE_CAP));
        self.record(&p, bytes.as_deref().ok());
        let bytes = bytes?;
        Ok((p.display().to_string(), bytes))
    }
}

/// The digest of a rule set's inputs: the rule file's alone when it names no
/// other file (as before sets existed), else over it and each file it read.
pub fn inputs_digest(rules: &str, inputs: &[(std::path::PathBuf, String)]) -> String {
    if inputs.is_empty() {
        return rules.to_string();
    }
    let mut all = format!("rules {rules}\n");
    for (p, d) in inputs {
        all.push_str(&format!("{} {d}\n", p.display()));
    }
    crate::digest(all.as_bytes())
}

/// Replaces `path` with `bytes` through a temporary file beside it (`.NAME.tmp`)
/// renamed over it: a reader sees the old file or the new one, never half of
/// one. `mode`: the new file's permissions (0o600 for egress's own state);
/// `None`: the umask's default.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if let Some(m) = mode {
        o.mode(m);
    }
    o.open(&tmp)?.write_all(bytes)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_show() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999G").unwrap_err().contains("too large"));
        assert_eq!(show_size(64 << 20), "64 MiB");
        assert_eq!(show_size(300_000_000), "286.1 MiB");
    }

    #[test]
    fn caps_hold_for_files_devices_and_lines() {
        let dir = std::env::temp_dir().join(format!("egress-input-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("r.toml");
        fs::write(&f, "a\nbb\n").unwrap();
        assert_eq!(read_with_cap(&f, "rule file", 5).unwrap(), b"a\nbb\n");
        let e = read_with_cap(&f, "rule file", 4).unwrap_err();
        assert!(e.contains("5 bytes, more than the 4 bytes a rule file may be (--max-file-size raises the limit)"), "{e}");
        // A device without a size is read up to the cap, then refused.
        let e = read_with_cap(Path::new("/dev/zero"), "rule file", 1 << 20).unwrap_err();
        assert!(e.contains("/dev/zero: more than 1 MiB read, more than the 1 MiB a rule file may be"), "{e}");
        let long = format!("x = 1\n{}\n", "y".repeat(MAX_LINE_LEN + 1));
        let e = text_of(&f, long.into_bytes()).unwrap_err();
        assert!(e.contains("r.toml:2: a line of 4194305 bytes, longer than the 4 MiB a line may be"), "{e}");
        assert!(text_of(&f, vec![b'a', 0xff]).unwrap_err().contains("not UTF-8 text (invalid byte at offset 1)"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
