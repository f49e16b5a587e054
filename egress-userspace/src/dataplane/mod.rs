//! All kernel I/O. Nothing else in the crate makes BPF syscalls, joins namespaces
//! or touches bpffs.
//!
//! - `env`: mount and network namespaces, bpffs, interface facts, netns cookies.
//! - `load`: create maps, load the programs; `fill`: write a compiled rule set
//!   into the fresh maps; `batch`: array entries written and read many to a
//!   syscall; `counters`: COUNTERS, a run of slots per CPU, summed and zeroed.
//! - `link`: attach, replace (bpf_link_update) and detach; link health; the
//!   RCU barrier that tells when no CPU still runs a replaced program.
//! - `cgroup`: cgroup attachments (a cgroup v2 directory's packets and socket
//!   calls): find and check the cgroup, attach by pinned links, CG_OWNERS.
//! - `conn`: stateful mode's connection table (pins, resize, readout).
//! - `state`: the state files and pins of each attachment, locks.
//! - `events`: the deny events' ring buffer (shared by the generations) and counters.
//! - `explain`: one synthetic packet through a live rule set's classifier
//!   (BPF_PROG_TEST_RUN on its pinned maps; nothing changes).
//! - `readout`: counters as they stand, `--reset`, link health and status.
//! - `hot`: a replacement that keeps the loaded program: the rule set into the
//!   idle half of its maps (only the entries that differ from what it holds),
//!   then one EPOCH write (egress-common's halves.rs); `mmap`: the rule maps,
//!   COUNTERS and EPOCH mapped into memory.
//! - `apply`: one atomic replacement with counters carried over by rule identity,
//!   counter readout, detach, prune. `egress apply` and `egress run` both use it.
//!
//! An attachment is identified by the network namespace's cookie (never reused
//! while the machine runs) and the interface index, so any number of namespaces
//! can use the same interface name; a cgroup by its id (KEY = "cgroup-ID").
//! Layout, per attachment KEY = "COOKIE-IFINDEX":
//!   /sys/fs/bpf/egress/KEY/link        the tcx link (keeps the program attached)
//!   /sys/fs/bpf/egress/KEY/gN/MAP      the maps of rule-set generation N
//!   /run/egress/KEY.json               rule names, file, digest, counter bases

mod apply;
mod batch;
mod cgroup;
mod conn;
mod counters;
mod debug_log;
mod dns;
mod env;
mod events;
mod explain;
mod fill;
mod hot;
mod link;
mod load;
mod lock;
mod memo;
mod mmap;
mod readout;
mod state;

use std::io;

use aya::programs::ProgramError;

pub use apply::{Applied, ApplyRequest, ReloadPath, Removed, apply, detach, prune};
pub use cgroup::{Process, cgroup2_mount, process, resolve_cgroup, resolve_cgroup_or_state, unit_cgroup};
pub use conn::ConnReadout;
pub use debug_log::{DebugLog, LogLine, open_debug_log};
pub use dns::{DnsLoad, DnsReadout, Learned, wire_to_text};
pub use env::{
    Target, closed_pipe_ends_process, ensure_bpffs, enter_host_mount_ns, enter_netns, has_ethernet, iface_addresses, netns_cookie, resolve,
    resolve_or_state,
};
pub use events::{EventStream, Received, event_stats, mono_ns_to_unix_ns, open_events};
pub use explain::{Decision, explain};
pub use link::{LinkHealth, wait_for_running_programs};
pub use load::{LoadOptions, Loaded, flow_cache_slots};
pub use readout::{Readout, read_counters, read_dns, reset_counters, status_of, statuses};
pub use state::{
    Count, PatternInfo, Pending, RuleInfo, RunLock, STATE_DIR, State, all_states, now_unix, pin_dir, read_state, save_imported,
};

/// The eBPF object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"));

/// The digest of [`EBPF_OBJECT`]: a hot reload writes into a loaded
/// program's maps only when that program is this object (another build's maps
/// may be laid out otherwise, and its program may read them otherwise).
pub fn object_digest() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| crate::digest(EBPF_OBJECT))
}

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
    /// The kernel could not create or fill a map of the new rule set (most
    /// often memory: the cgroup's limit, RLIMIT_MEMLOCK before 5.11, or the
    /// machine's): nothing was attached or swapped.
    /// (`error` rather than `source`: the message ends with the advice, not
    /// with the kernel's reason repeated.)
    #[error("{op}: {error}{}", memory_hint(error))]
    MapMemory { op: String, error: io::Error },
    /// Another process holds the lock of an interface.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, DataplaneError>;

/// What to do when the kernel refuses a map for want of memory or permission.
fn memory_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::EPERM) | Some(libc::E2BIG) => {
            "\nthe kernel could not give the new rule set's maps the memory they need; nothing was attached, and the rules enforced before stay. \
             Lower --flow-cache (flow_cache in egress run's config) or [state] max_flows, or load fewer rules; or raise the memory limit of \
             egress's cgroup (memory.max, MemoryMax= for systemd) or, on kernels before 5.11, RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK=)"
        }
        _ => "",
    }
}

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

/// `bpf(2)` with an attribute struct; returns the raw result (fd or 0) or the error.
fn bpf_sys<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, correctly sized `union bpf_attr` prefix for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}
