//! What an attachment leaves behind for later commands: the state file (rule
//! names, file, digest, counter bases, the generation whose counts are still being
//! carried over) and the paths of its pins. The locks that keep two
//! replacements of one attachment, or two `egress run` on one interface,
//! apart are in lock.rs (re-exported here).

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use super::lock::RunLock;
pub(super) use super::lock::attachment_lock;
use super::{DataplaneError, Result, io_err};
use crate::{hook::Hook, rules::StateConfig};

pub const PIN_ROOT: &str = "/sys/fs/bpf/egress";
pub const STATE_DIR: &str = "/run/egress";

/// Pins of one attachment: `link` and one `gN` folder of maps per live generation.
pub fn pin_dir(key: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(key)
}
pub(super) fn link_pin(key: &str) -> PathBuf {
    pin_dir(key).join("link")
}
/// Deny events: the ring buffer and its counters, shared by every generation.
pub(super) fn events_dir(key: &str) -> PathBuf {
    pin_dir(key).join("events")
}
/// Stateful mode: the companion program's link.
pub(super) fn companion_pin(key: &str) -> PathBuf {
    pin_dir(key).join("companion")
}
/// Stateful mode: the connection table (`cN/CONN_V4`, `cN/CONN_V6` for a table of
/// N entries; `mN/` held a release's LRU table) and its counters (`CONN_STATS`),
/// shared by every generation.
pub(super) fn conn_dir(key: &str) -> PathBuf {
    pin_dir(key).join("conn")
}
/// Rules by name: the learned tables (`bN/DNS_LEARN_V4`, `bN/DNS_LEARN_V6` for
/// tables of N buckets), queries, names and counters, shared by every generation.
pub(super) fn dns_dir(key: &str) -> PathBuf {
    pin_dir(key).join("dns")
}
pub(super) fn gen_dir(key: &str, generation: u64) -> PathBuf {
    pin_dir(key).join(format!("g{generation}"))
}
fn state_path(key: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{key}.json"))
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds of the latest packet counted; 0: never.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub last_hit: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl std::ops::Add for Count {
    type Output = Count;
    /// Counts add up; the latest hit is the later one.
    fn add(self, o: Count) -> Count {
        Count { packets: self.packets + o.packets, bytes: self.bytes + o.bytes, last_hit: self.last_hit.max(o.last_hit) }
    }
}

impl Count {
    pub fn is_zero(&self) -> bool {
        self.packets == 0 && self.bytes == 0
    }
    /// What is counted beyond `o` (a reset's snapshot); never below zero.
    /// The latest hit stays: it is history, not a count.
    pub fn since_reset(self, o: Count) -> Count {
        Count { packets: self.packets.saturating_sub(o.packets), bytes: self.bytes.saturating_sub(o.bytes), last_hit: self.last_hit }
    }
}

/// One rule as loaded, and the counts it carries from earlier generations.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: String,
    pub action: String,
    #[serde(rename = "match")]
    pub summary: String,
    /// Counted by earlier generations of this same rule (folded in after each
    /// replacement); the live map adds what this generation counted.
    #[serde(default)]
    pub base: Count,
    /// Unix seconds since which this rule (same name, match and action) counts.
    #[serde(default)]
    pub since: u64,
    /// A deny rule in audit mode: counted, the packet passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// `egress counters --reset`: the total (base + live) at the reset; shown
    /// counts are what came after it. A snapshot, so no packet is lost.
    #[serde(default, skip_serializing_if = "Count::is_zero")]
    pub reset: Count,
}

impl RuleInfo {
    /// The same rule for counting purposes: same name, same match, same action.
    pub fn same_rule(&self, o: &RuleInfo) -> bool {
        self.name == o.name && self.action == o.action && self.summary == o.summary
    }
}

/// Counts of the previous generation that are not folded into the bases yet: its
/// maps stay pinned and readers add their live values, until no CPU can still run
/// the previous program (an RCU grace period after the swap).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    pub generation: u64,
    /// (new counter slot, old counter slot) for every row carried over, the default
    /// row (0, 0) included when the default policy did not change.
    pub slots: Vec<(u32, u32)>,
    /// Where the old counter slots start in that generation's COUNTERS (its
    /// live half's base). After a hot reload the generation is the same and
    /// this is the other half.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub counter_base: u32,
}

/// Hot reloads (hot.rs): the rule maps' halves as loaded, and what else the
/// loaded program was built for that the State does not say.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Halves {
    pub caps: crate::compile::place::Caps,
    /// EPOCH as last written: its low bit is the live half.
    pub epoch: u32,
    /// The deny events' rate limit the program was loaded with.
    pub events: crate::rules::EventsConfig,
    /// The digest of the eBPF object the program was loaded from
    /// (`object_digest`); empty in the state of an egress before it, whose
    /// program is then replaced rather than reloaded hot.
    #[serde(default)]
    pub object: String,
}

impl Halves {
    /// Where the live half's counter slots start.
    pub fn counter_base(&self) -> u32 {
        self.caps.bases(egress_common::half_of(self.epoch)).counters
    }
}

/// A pattern of a rule by name and the first rule that names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatternInfo {
    pub pattern: String,
    pub rule: String,
}

impl PatternInfo {
    /// The pattern of a learned entry's id, if still applied.
    pub fn of_id(all: &[PatternInfo], id: u64) -> Option<&PatternInfo> {
        all.iter().find(|p| crate::rules::pattern_id(&p.pattern) == id)
    }
}

/// One attachment's state, in /run/egress/KEY.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub key: String,
    pub iface: String,
    pub ifindex: u32,
    pub netns_cookie: u64,
    /// Human name of the namespace when the rules were applied.
    pub netns: String,
    /// The hook: tc-egress, tc-ingress or xdp (state files written before hooks
    /// existed say "tcx" or "clsact" here: tc-egress).
    #[serde(deserialize_with = "hook_or_legacy")]
    pub hook: Hook,
    /// How the program is attached: "tcx" or "clsact" (TC hooks), "native" or
    /// "generic" (XDP).
    #[serde(default = "tcx")]
    pub mode: String,
    pub rules_file: String,
    pub digest: String,
    /// Unix seconds.
    pub loaded_at: u64,
    pub generation: u64,
    pub default_action: String,
    /// The default policy is a deny in audit mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_audit: bool,
    pub rules: Vec<RuleInfo>,
    /// The default-policy row's counts from earlier generations and its start.
    #[serde(default)]
    pub default_base: Count,
    #[serde(default)]
    pub default_since: u64,
    /// The default-policy row's reset snapshot (see `RuleInfo::reset`).
    #[serde(default, skip_serializing_if = "Count::is_zero")]
    pub default_reset: Count,
    /// STATS (packets not matched against rules) from earlier generations.
    #[serde(default)]
    pub stats_base: Vec<u64>,
    /// Flow verdict cache slots per family as loaded (0: off).
    #[serde(default)]
    pub flow_cache: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// Stateful mode's settings (None: stateless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<StateConfig>,
    /// Stateful mode: the hook the companion program watches (the other direction)
    /// and how it is attached, e.g. "tc-ingress (tcx)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion: Option<String>,
    /// clsact only: the companion filter's priority and handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion_nl: Option<(u16, u32)>,
    /// clsact only: the filter's priority and handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nl_priority: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nl_handle: Option<u32>,
    /// Debug mode: the classifier's `_dbg` twin is attached (`egress log` reads it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub debug: bool,
    /// Rules by name: `[dns]` as applied, and the attachment's hash key
    /// (chosen at its first rule set by name, kept while it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::rules::DnsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_key: Option<[u64; 2]>,
    /// The patterns as applied, in order, each with the first rule naming it
    /// (for `egress dns` and explain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<PatternInfo>,
    /// A cgroup attachment (hook "cgroup", its path in `iface`): the cgroup's
    /// id and level.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub cgroup_level: u32,
    /// The generation whose pinned maps hold this rule set, when not its own:
    /// a hot reload keeps the maps (and program) of an earlier generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps: Option<u64>,
    /// Hot reloads: the halves of the rule maps (None: written by a version
    /// without them; the next reload is a full one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halves: Option<Halves>,
}

impl State {
    /// The generation whose pinned maps (`gN`) hold this rule set.
    pub fn maps_generation(&self) -> u64 {
        self.maps.unwrap_or(self.generation)
    }
    /// Where the live counter slots start in COUNTERS.
    pub fn counter_base(&self) -> u32 {
        self.halves.as_ref().map_or(0, Halves::counter_base)
    }
    /// A cgroup's attachment (not an interface's).
    pub fn is_cgroup(&self) -> bool {
        self.hook == Hook::Cgroup
    }

    /// Where it is, for people: "eth0 (tc-egress)" or "cgroup /sys/fs/cgroup/...".
    pub fn place(&self) -> String {
        if self.is_cgroup() { format!("cgroup {}", self.iface) } else { format!("{} ({})", self.iface, self.hook) }
    }

    /// How commands name it: "--iface eth0" (with "--hook H" for other hooks) or "--cgroup PATH".
    pub fn at_args(&self) -> String {
        match self.hook {
            Hook::Cgroup => format!("--cgroup {}", self.iface),
            Hook::TcEgress => format!("--iface {}", self.iface),
            h => format!("--iface {} --hook {h}", self.iface),
        }
    }

    /// Its identity in JSON: {"iface","netns","ifindex"} or {"cgroup","cgroup_id"}.
    pub fn at_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = if self.is_cgroup() {
            serde_json::json!({"cgroup": self.iface, "cgroup_id": self.cgroup_id})
        } else {
            serde_json::json!({"iface": self.iface, "netns": self.netns, "ifindex": self.ifindex})
        };
        match v {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn tcx() -> String {
    "tcx".into()
}

fn hook_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Hook, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "tcx" | "clsact" => Ok(Hook::TcEgress),
        other => other.parse().map_err(serde::de::Error::custom),
    }
}

pub fn read_state(key: &str) -> Result<Option<State>> {
    read_state_memo(key, false)
}

/// [`read_state`] for a replacement (under the attachment's lock), which
/// writes the next state: the memo of the last one written is taken, not
/// copied (memo.rs).
pub(super) fn read_state_for_update(key: &str) -> Result<Option<State>> {
    read_state_memo(key, true)
}

fn read_state_memo(key: &str, take: bool) -> Result<Option<State>> {
    let p = state_path(key);
    if let Some(st) = super::memo::get(&p, take) {
        return Ok(Some(st));
    }
    match fs::read_to_string(&p) {
        Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| DataplaneError::Other(format!("{}: corrupt state file: {e}", p.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", p.display()))(e)),
    }
}

/// Creates `dir` (and its missing parents) owner-only (0700): state, pins.
pub(super) fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(format!("create {}", dir.display())))
}

/// Replaces one of egress's own files, owner-only and atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::input::write_atomically(path, bytes, Some(0o600)).map_err(io_err(format!("write {}", path.display())))
}

/// The state directory, created owner-only; when it is there already, it must
/// be root's and writable by nobody else (whoever can write it can forge what
/// egress believes is enforced): an error, or a warning with
/// `--allow-insecure-files`.
pub(super) fn ensure_state_dir() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    private_dir(Path::new(STATE_DIR))?;
    let meta = fs::metadata(STATE_DIR).map_err(io_err(format!("stat {STATE_DIR}")))?;
    if let Some(why) = crate::input::insecure(&meta) {
        let msg = format!("{STATE_DIR} is {why} (mode {:04o}, uid {})", meta.mode() & 0o7777, meta.uid());
        if !crate::input::allow_insecure() {
            return Err(DataplaneError::Other(format!(
                "{msg}: anyone who can write it can change what egress believes is enforced; `chown root {STATE_DIR}; chmod 700 {STATE_DIR}`, or pass --allow-insecure-files"
            )));
        }
        tracing::warn!("{msg} (--allow-insecure-files)");
    }
    Ok(())
}

/// Keeps the rule file `egress apply --cloudstack` made for attachment `key`
/// under /run/egress/imported/, named by its content (so each generation's file
/// stays as it was applied, for `explain`), owner-only; drops the attachment's
/// older ones. Returns its path.
pub fn save_imported(key: &str, digest: &str, text: &str) -> Result<PathBuf> {
    ensure_state_dir()?;
    let dir = Path::new(STATE_DIR).join("imported");
    private_dir(&dir)?;
    let short: String = digest.trim_start_matches("sha256:").chars().take(16).collect();
    let path = dir.join(format!("{key}-{short}.toml"));
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{key}-")) && e.path() != path {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// Writes the state file atomically (a new file renamed over the old one).
pub(super) fn write_state(st: &State) -> Result<()> {
    ensure_state_dir()?;
    let body = serde_json::to_string(st).map_err(|e| DataplaneError::Other(e.to_string()))?;
    let path = state_path(&st.key);
    write_private(&path, body.as_bytes())?;
    // A state with a fold pending is written again once the fold is done
    // (apply.rs `fold_pending`): only that one is worth a copy in memory (a
    // 100k-rule copy is tens of milliseconds).
    if st.pending.is_none() {
        super::memo::put(&path, st);
    }
    Ok(())
}

/// Removes the state file, and the attachment's lock file (call with the lock held).
pub(super) fn remove_state(key: &str) -> Result<bool> {
    let _ = fs::remove_file(Path::new(STATE_DIR).join(format!("{key}.lock")));
    let p = state_path(key);
    match fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("remove {}", p.display()))(e)),
    }
}

/// Every state file (attachments with rules loaded), sorted by namespace and interface.
pub fn all_states() -> Result<Vec<State>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(STATE_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(format!("read {STATE_DIR}"))(e)),
    };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().to_string();
        if let Some(key) = name.strip_suffix(".json")
            && let Some(st) = read_state(key)?
        {
            out.push(st);
        }
    }
    out.sort_by(|a, b| (&a.netns, &a.iface, a.netns_cookie, a.hook).cmp(&(&b.netns, &b.iface, b.netns_cookie, b.hook)));
    Ok(out)
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock the program stamps its tables with
/// (bpf_ktime_get_coarse_ns).
pub(super) fn mono_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
