//! All kernel I/O: load the program with a compiled rule set, attach or replace it
//! on an interface's TC egress hook, pin it, read counters, detach. Nothing else in
//! the crate makes BPF syscalls.
//!
//! Layout on bpffs, per interface:
//!   /sys/fs/bpf/egress/IF/link        the tcx link (keeps the program attached)
//!   /sys/fs/bpf/egress/IF/gN/MAP      the maps of rule-set generation N
//! and the state file /run/egress/IF.json (rule names, file, digest, generation).

use std::{
    ffi::CString,
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, TcHandle},
    },
};
use egress_common::{
    ALL_MAPS, Counter, DstValue, FLOW_CACHE_ENTRIES, GLOBAL_DEFAULT_ACTION, GLOBAL_FLOW_MASK, GLOBAL_GENERATION, GLOBAL_HAS_ETH, ListSlot,
    Lists, MAP_COUNTERS, MAP_DST_V4, MAP_DST_V6, MAP_FLOW_V4, MAP_FLOW_V6, MAP_LISTS, MAP_PAIR_V4, MAP_PAIR_V6, MAP_RANGES, MAP_STATS,
    MAX_FLOW_CACHE_ENTRIES, PROGRAM_NAME, PairKeyV4, PairKeyV6, PortRange, STATS_LEN,
};
use serde::{Deserialize, Serialize};

use crate::compile::{Compiled, Prefix};

/// The eBPF object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"));

pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/egress";
pub const STATE_DIR: &str = "/run/egress";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("{op}: {source}")]
    Ebpf { op: String, source: Box<aya::EbpfError> },
    #[error("{op}: {source}")]
    Map { op: String, source: aya::maps::MapError },
    #[error("{op}: {source}")]
    Program { op: String, source: ProgramError },
    #[error("{op}: {source}")]
    Pin { op: String, source: aya::pin::PinError },
    #[error("{op}: {source}")]
    Link { op: String, source: aya::programs::links::LinkError },
    #[error("the kernel verifier rejected the classifier: {source}\nverifier log (tail):\n{log}")]
    Verifier { source: io::Error, log: String },
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let op = op.into();
    move |source| DataplaneError::Io { op, source }
}
fn map_err(op: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    let op = op.into();
    move |source| DataplaneError::Map { op, source }
}
fn prog_err(op: impl Into<String>) -> impl FnOnce(ProgramError) -> DataplaneError {
    let op = op.into();
    move |source| DataplaneError::Program { op, source }
}
fn pin_err(op: impl Into<String>) -> impl FnOnce(aya::pin::PinError) -> DataplaneError {
    let op = op.into();
    move |source| DataplaneError::Pin { op, source }
}

// ---------------------------------------------------------------------------
// Environment: mount namespace and bpffs
// ---------------------------------------------------------------------------

/// `ip netns exec` runs commands in a private mount namespace with a fresh /sys
/// and no bpf filesystem, so pins made there would vanish (and the program be
/// detached) when the command exits. When /sys/fs/bpf is not a bpffs here, join
/// the mount namespace of the nearest ancestor process that has another one (for
/// `ip netns exec`, the shell that ran it), keeping our network namespace, so that
/// pins land where every later command finds them. Must run before any thread is
/// started (setns(CLONE_NEWNS) refuses multi-threaded callers).
pub fn enter_host_mount_ns() -> Result<()> {
    if is_bpffs(BPFFS) {
        return Ok(());
    }
    let ours = fs::read_link("/proc/self/ns/mnt").map_err(io_err("read /proc/self/ns/mnt"))?;
    let mut pid = std::process::id();
    for _ in 0..64 {
        let Some(ppid) = parent_pid(pid) else {
            return Ok(());
        };
        if ppid == 0 {
            return Ok(());
        }
        let ns = format!("/proc/{ppid}/ns/mnt");
        match fs::read_link(&ns) {
            Ok(theirs) if theirs != ours => {
                let f = fs::File::open(&ns).map_err(io_err(format!("open {ns}")))?;
                // SAFETY: plain syscall on a valid fd.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) };
                if rc != 0 {
                    return Err(io_err(format!("join the mount namespace of process {ppid} ({ns})"))(io::Error::last_os_error()));
                }
                tracing::debug!(ppid, "joined the parent's mount namespace for bpffs pins");
                return Ok(());
            }
            Ok(_) => pid = ppid,
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

fn parent_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

fn is_bpffs(path: &str) -> bool {
    let Ok(c) = CString::new(path) else {
        return false;
    };
    // SAFETY: statfs fills the struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts the bpf filesystem at /sys/fs/bpf when it is not there.
pub fn ensure_bpffs() -> Result<()> {
    if is_bpffs(BPFFS) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(io_err(format!("create {BPFFS}")))?;
    let c = |s: &str| CString::new(s).map_err(|_| DataplaneError::Other("nul in path".into()));
    let (src, dst, ty) = (c("bpf")?, c(BPFFS)?, c("bpf")?);
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io_err(format!("mount the bpf filesystem at {BPFFS}"))(io::Error::last_os_error()));
    }
    Ok(())
}

pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}
fn link_pin(iface: &str) -> PathBuf {
    pin_dir(iface).join("link")
}
fn gen_dir(iface: &str, generation: u64) -> PathBuf {
    pin_dir(iface).join(format!("g{generation}"))
}
pub fn state_path(iface: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{iface}.json"))
}

/// Network namespace identity (inode of /proc/self/ns/net), to tell apart
/// interfaces of the same name in different namespaces.
pub fn netns_id() -> String {
    fs::read_link("/proc/self/ns/net").map(|p| p.display().to_string()).unwrap_or_default()
}

/// Interface index, or a clear error naming the interface.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = CString::new(iface).map_err(|_| DataplaneError::Other(format!("bad interface name '{iface}'")))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DataplaneError::Other(format!("no interface '{iface}' in this network namespace (see `ip link`)")));
    }
    Ok(idx)
}

/// Whether frames on the interface start with an Ethernet header.
pub fn has_ethernet(iface: &str) -> Result<bool> {
    let p = format!("/sys/class/net/{iface}/type");
    match fs::read_to_string(&p) {
        // ARPHRD_ETHER (1) and ARPHRD_LOOPBACK (772) carry an Ethernet header.
        Ok(t) => match t.trim() {
            "1" | "772" => Ok(true),
            // ARPHRD_NONE (tun, WireGuard), ARPHRD_RAWIP (519): raw IP.
            "65534" | "519" => Ok(false),
            other => Err(DataplaneError::Other(format!(
                "interface '{iface}' has link type {other}; egress supports Ethernet and raw-IP (tun, WireGuard) interfaces"
            ))),
        },
        // /sys may show another namespace's devices: assume Ethernet, the common case.
        Err(_) => Ok(true),
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// A loaded (not attached) classifier holding one compiled rule set.
pub struct Loaded {
    pub ebpf: Ebpf,
}

/// How to load a rule set besides the rules themselves.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Frames start with an Ethernet header (false for tun/WireGuard).
    pub has_eth: bool,
    /// Rule-set generation stamped into flow-cache entries (never 0).
    pub generation: u32,
    /// Flow verdict cache entries per address family; 0 turns the cache off.
    pub flow_cache: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { has_eth: true, generation: 1, flow_cache: FLOW_CACHE_ENTRIES }
    }
}

/// The flow-cache slots per family a request gets: 0 (off), or a power of two (the
/// program masks the hash) up to `MAX_FLOW_CACHE_ENTRIES`.
pub fn flow_cache_slots(requested: u32) -> u32 {
    if requested == 0 { 0 } else { requested.min(MAX_FLOW_CACHE_ENTRIES).next_power_of_two() }
}

impl Loaded {
    /// Creates the maps, writes the rule set into them and loads the program
    /// through the verifier. Nothing is attached.
    pub fn new(c: &Compiled, has_eth: bool) -> Result<Loaded> {
        Self::with_options(c, &LoadOptions { has_eth, ..LoadOptions::default() })
    }

    /// As [`Loaded::new`], with every load option.
    pub fn with_options(c: &Compiled, o: &LoadOptions) -> Result<Loaded> {
        let has_eth: u32 = o.has_eth as u32;
        let generation = o.generation.max(1);
        let slots = flow_cache_slots(o.flow_cache);
        // An array needs at least one slot even when the cache is off.
        let cache_entries = slots.max(1);
        let mask: u32 = if slots == 0 { u32::MAX } else { slots - 1 };
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_DEFAULT_ACTION, &c.default_action, true)
            .override_global(GLOBAL_HAS_ETH, &has_eth, true)
            .override_global(GLOBAL_GENERATION, &generation, true)
            .override_global(GLOBAL_FLOW_MASK, &mask, true)
            .map_max_entries(MAP_COUNTERS, c.counter_slots)
            // Arrays are preallocated: exactly the rule set's size (at least 1).
            .map_max_entries(MAP_LISTS, (c.list_slots.len() as u32).max(1))
            .map_max_entries(MAP_RANGES, (c.ranges.len() as u32).max(1))
            .map_max_entries(MAP_FLOW_V4, cache_entries)
            .map_max_entries(MAP_FLOW_V6, cache_entries)
            .load(EBPF_OBJECT)
            .map_err(|source| DataplaneError::Ebpf { op: "load the eBPF object (create maps)".into(), source: Box::new(source) })?;
        fill(&mut ebpf, c)?;
        let prog = classifier(&mut ebpf)?;
        if let Err(e) = prog.load() {
            return Err(match e {
                ProgramError::LoadError { io_error, verifier_log } => {
                    let log = verifier_log.to_string();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                    DataplaneError::Verifier { source: io_error, log: tail }
                }
                other => DataplaneError::Program { op: "load the classifier".into(), source: other },
            });
        }
        Ok(Loaded { ebpf })
    }

    pub fn program(&mut self) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf)
    }

    /// Summed counters (index 0 = default policy).
    pub fn counters(&self) -> Result<Vec<Counter>> {
        let map = self.ebpf.map(MAP_COUNTERS).ok_or_else(|| DataplaneError::Other("no COUNTERS map".into()))?;
        let arr: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map).map_err(map_err("open COUNTERS"))?;
        sum_counters(&arr)
    }

    pub fn stats(&self) -> Result<Vec<u64>> {
        let map = self.ebpf.map(MAP_STATS).ok_or_else(|| DataplaneError::Other("no STATS map".into()))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err("open STATS"))?;
        sum_stats(&arr)
    }
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| DataplaneError::Other(format!("program {PROGRAM_NAME} missing from the eBPF object")))?;
    prog.try_into().map_err(prog_err("program is not a TC classifier"))
}

fn v4(p: &Prefix) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&p.addr[..4]);
    a
}
fn v6(p: &Prefix) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&p.addr[..16]);
    a
}

/// The bytes of a plain-old-data map key or value.
fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `Pod` types are `Copy`, `#[repr(C)]` and have no padding (egress-common
    // asserts their sizes), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Map entries laid out as the kernel reads them in a batch: keys in one buffer
/// (for an LPM trie `u32 prefix length (host order) ‖ data`, for an array the u32
/// index), values in another.
struct Batch {
    keys: Vec<u8>,
    values: Vec<u8>,
    count: usize,
}

impl Batch {
    fn with_capacity<K, V>(n: usize) -> Batch {
        Batch {
            keys: Vec::with_capacity(n * (4 + std::mem::size_of::<K>())),
            values: Vec::with_capacity(n * std::mem::size_of::<V>()),
            count: 0,
        }
    }
    fn push<K: aya::Pod, V: aya::Pod>(&mut self, prefix_len: u32, key: &K, value: &V) {
        self.keys.extend_from_slice(&prefix_len.to_ne_bytes());
        self.keys.extend_from_slice(pod_bytes(key));
        self.values.extend_from_slice(pod_bytes(value));
        self.count += 1;
    }
    /// An array entry: the key is the index.
    fn push_index<V: aya::Pod>(&mut self, index: u32, value: &V) {
        self.keys.extend_from_slice(&index.to_ne_bytes());
        self.values.extend_from_slice(pod_bytes(value));
        self.count += 1;
    }
}

/// `union bpf_attr` as BPF_MAP_UPDATE_BATCH reads it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries per batch syscall: big enough that the syscall cost vanishes, small
/// enough that a failing entry is found quickly.
const BATCH_CHUNK: usize = 65_536;

/// Writes a batch into a map with BPF_MAP_UPDATE_BATCH, one syscall per
/// [`BATCH_CHUNK`] entries. Kernels without batch support for the map type
/// (EINVAL/ENOTSUPP before any entry is written) get one update per entry.
fn write_batch(ebpf: &mut Ebpf, name: &str, b: &Batch) -> Result<()> {
    if b.count == 0 {
        return Ok(());
    }
    let (ks, vs) = (b.keys.len() / b.count, b.values.len() / b.count);
    let map = ebpf.map_mut(name).ok_or_else(|| DataplaneError::Other(format!("map {name} missing from the eBPF object")))?;
    let data: &MapData = match map {
        Map::LpmTrie(m) | Map::Array(m) => m,
        _ => {
            return Err(DataplaneError::Other(format!("map {name} is neither an LPM trie nor an array")));
        }
    };
    let fd = {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        data.fd().as_fd().as_raw_fd() as u32
    };
    let mut done = 0;
    while done < b.count {
        let n = (b.count - done).min(BATCH_CHUNK);
        let mut attr = BatchAttr {
            keys: b.keys[done * ks..].as_ptr() as u64,
            values: b.values[done * vs..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at live buffers holding `n` keys and values of the
        // map's sizes; the kernel only reads them (and writes attr.count).
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let unsupported = matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(524 /* ENOTSUPP */));
            if done == 0 && attr.count == 0 && unsupported {
                return write_one_by_one(fd, name, b, ks, vs);
            }
            let at = done + attr.count as usize;
            return Err(DataplaneError::Other(format!("write map {name}: entry {at} of {}: {e}", b.count)));
        }
        done += n;
    }
    Ok(())
}

/// `union bpf_attr` as BPF_MAP_UPDATE_ELEM reads it.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

fn write_one_by_one(fd: u32, name: &str, b: &Batch, ks: usize, vs: usize) -> Result<()> {
    for i in 0..b.count {
        let mut attr = ElemAttr {
            map_fd: fd,
            key: b.keys[i * ks..].as_ptr() as u64,
            value: b.values[i * vs..].as_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: as in write_batch, for one entry.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &mut attr as *mut ElemAttr, std::mem::size_of::<ElemAttr>()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(DataplaneError::Other(format!("write map {name}: entry {i} of {}: {e}", b.count)));
        }
    }
    Ok(())
}

/// Writes a compiled rule set into freshly created (empty) maps.
fn fill(ebpf: &mut Ebpf, c: &Compiled) -> Result<()> {
    let mut b = Batch::with_capacity::<[u8; 4], DstValue>(c.dst_v4.len());
    for (p, v) in &c.dst_v4 {
        b.push(p.len as u32, &v4(p), v);
    }
    write_batch(ebpf, MAP_DST_V4, &b)?;
    let mut b = Batch::with_capacity::<[u8; 16], DstValue>(c.dst_v6.len());
    for (p, v) in &c.dst_v6 {
        b.push(p.len as u32, &v6(p), v);
    }
    write_batch(ebpf, MAP_DST_V6, &b)?;
    let mut b = Batch::with_capacity::<PairKeyV4, Lists>(c.pair_v4.len());
    for (class, s, list) in &c.pair_v4 {
        b.push(32 + s.len as u32, &PairKeyV4 { dst_class: class.to_be_bytes(), src: v4(s) }, list);
    }
    write_batch(ebpf, MAP_PAIR_V4, &b)?;
    let mut b = Batch::with_capacity::<PairKeyV6, Lists>(c.pair_v6.len());
    for (class, s, list) in &c.pair_v6 {
        b.push(32 + s.len as u32, &PairKeyV6 { dst_class: class.to_be_bytes(), src: v6(s) }, list);
    }
    write_batch(ebpf, MAP_PAIR_V6, &b)?;
    let mut b = Batch::with_capacity::<u32, ListSlot>(c.list_slots.len());
    for (i, v) in c.list_slots.iter().enumerate() {
        b.push_index(i as u32, v);
    }
    write_batch(ebpf, MAP_LISTS, &b)?;
    let mut b = Batch::with_capacity::<u32, PortRange>(c.ranges.len());
    for (i, v) in c.ranges.iter().enumerate() {
        b.push_index(i as u32, v);
    }
    write_batch(ebpf, MAP_RANGES, &b)
}

fn sum_counters<T: std::borrow::Borrow<MapData>>(arr: &PerCpuArray<T, Counter>) -> Result<Vec<Counter>> {
    let mut out = Vec::with_capacity(arr.len() as usize);
    for i in 0..arr.len() {
        let per_cpu = arr.get(&i, 0).map_err(map_err("read COUNTERS"))?;
        let mut c = Counter::default();
        for v in per_cpu.iter() {
            c.packets += v.packets;
            c.bytes += v.bytes;
        }
        out.push(c);
    }
    Ok(out)
}

fn sum_stats<T: std::borrow::Borrow<MapData>>(arr: &PerCpuArray<T, u64>) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(STATS_LEN as usize);
    for i in 0..arr.len() {
        let per_cpu = arr.get(&i, 0).map_err(map_err("read STATS"))?;
        out.push(per_cpu.iter().sum());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: String,
    pub action: String,
    #[serde(rename = "match")]
    pub summary: String,
}

/// What `apply` leaves behind for `counters`, `status` and the next `apply`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub iface: String,
    pub ifindex: u32,
    pub netns: String,
    /// "tcx" or "clsact".
    pub hook: String,
    pub rules_file: String,
    pub digest: String,
    /// Unix seconds.
    pub loaded_at: u64,
    pub generation: u64,
    pub default_action: String,
    pub rules: Vec<RuleInfo>,
    /// Flow verdict cache slots per family as loaded (0: off).
    #[serde(default)]
    pub flow_cache: u32,
    /// clsact only: the filter's priority and handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nl_priority: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nl_handle: Option<u32>,
}

pub fn read_state(iface: &str) -> Result<Option<State>> {
    let p = state_path(iface);
    match fs::read_to_string(&p) {
        Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| DataplaneError::Other(format!("{}: corrupt state file: {e}", p.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", p.display()))(e)),
    }
}

fn write_state(st: &State) -> Result<()> {
    fs::create_dir_all(STATE_DIR).map_err(io_err(format!("create {STATE_DIR}")))?;
    let p = state_path(&st.iface);
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_string_pretty(st).map_err(|e| DataplaneError::Other(e.to_string()))?;
    fs::write(&tmp, body).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &p).map_err(io_err(format!("rename {} to {}", tmp.display(), p.display())))
}

/// Every state file (interfaces with rules loaded), sorted by interface.
pub fn all_states() -> Result<Vec<State>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(STATE_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(format!("read {STATE_DIR}"))(e)),
    };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().to_string();
        if let Some(iface) = name.strip_suffix(".json")
            && let Some(st) = read_state(iface)?
        {
            out.push(st);
        }
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Apply / detach / counters
// ---------------------------------------------------------------------------

/// What `apply` needs besides the compiled maps.
pub struct ApplyRequest<'a> {
    pub iface: &'a str,
    pub compiled: &'a Compiled,
    /// Flow verdict cache entries per family (0: off).
    pub flow_cache: u32,
    pub rules_file: String,
    pub digest: String,
    pub default_action: String,
    pub rules: Vec<RuleInfo>,
}

/// Outcome of an apply.
pub struct Applied {
    pub state: State,
    pub replaced: bool,
}

/// Loads the rule set and attaches it to the interface's egress hook, or replaces
/// the rule set already there in one atomic step (bpf_link_update on the pinned
/// tcx link: each packet sees either the old program or the new one). Any failure
/// before that step leaves the old rule set enforced and untouched.
pub fn apply(req: ApplyRequest<'_>) -> Result<Applied> {
    let iface = req.iface;
    let idx = ifindex(iface)?;
    let netns = netns_id();
    ensure_bpffs()?;
    let prev = read_state(iface)?;
    if let Some(p) = &prev
        && p.netns != netns
        && link_pin(iface).exists()
    {
        return Err(DataplaneError::Other(format!(
            "rules for an interface named '{iface}' in another network namespace ({}) are pinned at {}; \
             detach them there first, or use a distinct interface name",
            p.netns,
            pin_dir(iface).display()
        )));
    }

    let generation = prev.as_ref().map(|p| p.generation + 1).unwrap_or(1);
    let opts = LoadOptions {
        has_eth: has_ethernet(iface)?,
        // Wraps after 4 billion applies; 0 is skipped because the program reserves it.
        generation: (generation % u64::from(u32::MAX)) as u32 + 1,
        flow_cache: req.flow_cache,
    };
    let mut loaded = Loaded::with_options(req.compiled, &opts)?;
    let gdir = gen_dir(iface, generation);
    fs::create_dir_all(&gdir).map_err(io_err(format!("create {}", gdir.display())))?;
    // Pin the new maps before the switch so that `counters` can follow at once.
    let pin_maps = |ebpf: &Ebpf| -> Result<()> {
        for name in ALL_MAPS {
            let m = ebpf.map(name).ok_or_else(|| DataplaneError::Other(format!("map {name} missing")))?;
            let path = gdir.join(name);
            let _ = fs::remove_file(&path);
            m.pin(&path).map_err(pin_err(format!("pin map {name} at {}", path.display())))?;
        }
        Ok(())
    };
    if let Err(e) = pin_maps(&loaded.ebpf) {
        let _ = fs::remove_dir_all(&gdir);
        return Err(e);
    }

    let prog = loaded.program()?;
    let lpath = link_pin(iface);
    let mut hook = "tcx".to_string();
    let (mut nl_priority, mut nl_handle) = (None, None);
    let replaced = lpath.exists() || prev.as_ref().is_some_and(|p| p.nl_priority.is_some());
    let switched = (|| -> Result<()> {
        match PinnedLink::from_pin(&lpath) {
            Ok(pinned) => {
                // Replace in place: one bpf_link_update.
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|source| DataplaneError::Link { op: format!("open the link pinned at {}", lpath.display()), source })?;
                let id = prog.attach_to_link(link).map_err(prog_err(format!("replace the classifier on {iface} (bpf_link_update)")))?;
                // The link stays pinned; forget our handle without detaching.
                let l = prog.take_link(id).map_err(prog_err("take link"))?;
                drop(FdLink::try_from(l).map_err(|source| DataplaneError::Link { op: "link handle".into(), source })?);
                Ok(())
            }
            Err(_) if prev.as_ref().and_then(|p| p.nl_priority).is_some() => {
                // clsact fallback: replace the filter with the same priority and handle.
                let p = prev.as_ref().ok_or_else(|| DataplaneError::Other("no state".into()))?;
                let (prio, handle) = (p.nl_priority.unwrap_or_default(), p.nl_handle.unwrap_or_default());
                let link = SchedClassifierLink::attached(iface, TcAttachType::Egress, prio, TcHandle::from(handle), None)
                    .map_err(io_err(format!("find the clsact filter on {iface}")))?;
                let id = prog.attach_to_link(link).map_err(prog_err(format!("replace the clsact filter on {iface}")))?;
                let l = prog.take_link(id).map_err(prog_err("take link"))?;
                hook = "clsact".into();
                nl_priority = Some(prio);
                nl_handle = Some(handle);
                // Netlink filters stay until deleted; dropping the handle would detach it.
                std::mem::forget(l);
                Ok(())
            }
            Err(_) => {
                fs::create_dir_all(pin_dir(iface)).map_err(io_err(format!("create {}", pin_dir(iface).display())))?;
                let tcx = kernel_has_tcx();
                if !tcx {
                    // Older kernels: a clsact qdisc with a direct-action filter.
                    if let Err(e) = tc::qdisc_add_clsact(iface)
                        && !matches!(&e, tc::TcError::AlreadyAttached)
                        && !e.to_string().contains("exists")
                    {
                        return Err(DataplaneError::Other(format!("add clsact qdisc to {iface}: {e}")));
                    }
                }
                let id = prog.attach(iface, TcAttachType::Egress).map_err(prog_err(format!("attach the egress classifier to {iface}")))?;
                let l = prog.take_link(id).map_err(prog_err("take link"))?;
                if tcx {
                    let fd = FdLink::try_from(l).map_err(|source| DataplaneError::Link { op: "tcx link handle".into(), source })?;
                    fd.pin(&lpath).map_err(pin_err(format!("pin the link at {}", lpath.display())))?;
                } else {
                    hook = "clsact".into();
                    nl_priority = Some(l.priority().map_err(prog_err("clsact filter priority"))?);
                    nl_handle = Some(u32::from(l.handle().map_err(prog_err("clsact filter handle"))?));
                    // Netlink filters stay until deleted; dropping the handle would detach it.
                    std::mem::forget(l);
                }
                Ok(())
            }
        }
    })();
    if let Err(e) = switched {
        let _ = fs::remove_dir_all(&gdir);
        return Err(e);
    }
    // The new program is live: drop the previous generation's pins.
    if let Some(p) = &prev
        && p.generation != generation
    {
        let _ = fs::remove_dir_all(gen_dir(iface, p.generation));
    }
    let state = State {
        iface: iface.to_string(),
        ifindex: idx,
        netns,
        hook,
        rules_file: req.rules_file,
        digest: req.digest,
        loaded_at: now_unix(),
        generation,
        default_action: req.default_action,
        rules: req.rules,
        flow_cache: flow_cache_slots(req.flow_cache),
        nl_priority,
        nl_handle,
    };
    write_state(&state)?;
    Ok(Applied { state, replaced })
}

fn kernel_has_tcx() -> bool {
    match aya::util::KernelVersion::current() {
        Ok(v) => v >= aya::util::KernelVersion::new(6, 6, 0),
        Err(_) => true,
    }
}

/// Removes the program from the interface and deletes its pins and state.
/// Returns false when nothing was loaded there.
pub fn detach(iface: &str) -> Result<bool> {
    ensure_bpffs()?;
    let lpath = link_pin(iface);
    let st = read_state(iface)?;
    let mut found = false;
    if lpath.exists() {
        found = true;
        let pinned = PinnedLink::from_pin(&lpath)
            .map_err(|source| DataplaneError::Link { op: format!("open the link pinned at {}", lpath.display()), source })?;
        // Unpinning drops the last reference to the link: the program is detached.
        let fd = pinned.unpin().map_err(io_err(format!("unpin {}", lpath.display())))?;
        drop(fd);
    }
    if let Some(s) = &st
        && let (Some(prio), Some(handle)) = (s.nl_priority, s.nl_handle)
    {
        found = true;
        if let Ok(link) = SchedClassifierLink::attached(iface, TcAttachType::Egress, prio, TcHandle::from(handle), None) {
            use aya::programs::links::Link as _;
            let _ = link.detach();
        }
    }
    let dir = pin_dir(iface);
    if dir.exists() {
        found = true;
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    if st.is_some() {
        found = true;
        fs::remove_file(state_path(iface)).map_err(io_err(format!("remove {}", state_path(iface).display())))?;
    }
    Ok(found)
}

/// Counters and stats of the rule set loaded on an interface.
pub struct Readout {
    pub state: State,
    /// Index 0 = default policy, i = rule i.
    pub counters: Vec<Counter>,
    pub stats: Vec<u64>,
}

pub fn read_counters(iface: &str) -> Result<Readout> {
    ensure_bpffs()?;
    let state = read_state(iface)?.ok_or_else(|| {
        DataplaneError::Other(format!(
            "no rules loaded on {iface} (no state at {}, nothing pinned under {}); run `egress apply --iface {iface} --rules FILE`",
            state_path(iface).display(),
            pin_dir(iface).display()
        ))
    })?;
    let gdir = gen_dir(iface, state.generation);
    let open = |name: &str| -> Result<MapData> {
        let p = gdir.join(name);
        MapData::from_pin(&p).map_err(map_err(format!("open pinned map {}", p.display())))
    };
    let counters = {
        let arr: PerCpuArray<MapData, Counter> =
            PerCpuArray::try_from(Map::PerCpuArray(open(MAP_COUNTERS)?)).map_err(map_err("open COUNTERS"))?;
        sum_counters(&arr)?
    };
    let stats = {
        let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(MAP_STATS)?)).map_err(map_err("open STATS"))?;
        sum_stats(&arr)?
    };
    Ok(Readout { state, counters, stats })
}

/// Is the pinned link still there (the program attached)?
pub fn link_present(iface: &str) -> bool {
    link_pin(iface).exists()
}
