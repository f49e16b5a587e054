//! Cgroup attachments (workload scope), beside the interface hooks of link.rs:
//! find and check a cgroup v2 directory, resolve a systemd unit's cgroup,
//! attach the cgroup programs by pinned links or replace their programs,
//! record the cgroup in the host's CG_OWNERS map, detach, health.
//!
//! An attachment is five links, pinned under its folder: `link` (cgroup_skb
//! egress: every packet) and `connect4`, `connect6`, `sendmsg4`, `sendmsg6`
//! (socket calls, refused with EPERM when denied); a stateful one, or one with
//! rules by name, has a sixth, `companion` (cgroup_skb ingress). A replacement updates them
//! one after the other (bpf_link_update each); between two updates a call and
//! a packet may be judged by different generations, never by a mix within one.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, links::FdLink},
};
use egress_common::{
    CGROUP_TRACK_PROGRAM_NAME, CONNECT4_PROGRAM_NAME, CONNECT6_PROGRAM_NAME, MAP_CG_OWNERS, SENDMSG4_PROGRAM_NAME, SENDMSG6_PROGRAM_NAME,
};

use super::{
    DataplaneError, Result,
    env::Target,
    io_err,
    link::{self, Attachment, LinkHealth},
    load::Loaded,
    map_err, pin_err, prog_err,
    state::{self, pin_dir},
};
use crate::hook::Hook;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// The socket-call programs and the name of their link pins.
pub(super) const CALLS: [(&str, &str); 4] = [
    (CONNECT4_PROGRAM_NAME, "connect4"),
    (CONNECT6_PROGRAM_NAME, "connect6"),
    (SENDMSG4_PROGRAM_NAME, "sendmsg4"),
    (SENDMSG6_PROGRAM_NAME, "sendmsg6"),
];

/// Stateful mode's companion link (cgroup_skb ingress).
const COMPANION: &str = "companion";

/// Where the host's CG_OWNERS map is pinned.
pub(super) fn owners_path() -> PathBuf {
    PathBuf::from(state::PIN_ROOT).join(MAP_CG_OWNERS)
}

/// The cgroup v2 hierarchy's mount point, from /proc/mounts (hosts differ:
/// /sys/fs/cgroup on current distributions, /sys/fs/cgroup/unified on hybrid
/// v1/v2 ones).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(io_err("read /proc/self/mounts"))?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
        })
        .next()
        .ok_or_else(|| {
            DataplaneError::Other(
                "this host has no cgroup v2 hierarchy mounted (cgroup v1 only): egress attaches to cgroup v2 directories; \
                 boot with systemd.unified_cgroup_hierarchy=1, or mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)"
                    .into(),
            )
        })
}

fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs fills the zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The cgroup at `path` as egress addresses it: its canonical path, id (the
/// directory's inode number on cgroup2, which is what the kernel's helpers
/// return) and level (0 = the hierarchy's root).
pub fn resolve_cgroup(path: &Path) -> Result<Target> {
    let shown = path.display();
    let canon = std::fs::canonicalize(path).map_err(|e| {
        DataplaneError::Other(format!("cgroup {shown}: {e} (give a cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/nginx.service)"))
    })?;
    let meta = std::fs::metadata(&canon).map_err(io_err(format!("stat {shown}")))?;
    if !meta.is_dir() {
        return Err(DataplaneError::Other(format!("{shown} is not a directory, so not a cgroup")));
    }
    match fs_type(&canon).map_err(io_err(format!("statfs {shown}")))? {
        CGROUP2_SUPER_MAGIC => {}
        CGROUP_SUPER_MAGIC => {
            let v2 = cgroup2_mount().map(|m| format!(" (this host's cgroup v2 hierarchy is at {})", m.display())).unwrap_or_default();
            return Err(DataplaneError::Other(format!("{shown} is a cgroup v1 directory; egress's hooks need cgroup v2{v2}")));
        }
        _ => return Err(DataplaneError::Other(format!("{shown} is not a cgroup v2 directory (not on a cgroup2 file system)"))),
    }
    let mount = cgroup2_mount()?;
    let mount = std::fs::canonicalize(&mount).unwrap_or(mount);
    let level = canon.strip_prefix(&mount).map(|r| r.components().count() as u32).map_err(|_| {
        DataplaneError::Other(format!("{shown} is not below the cgroup v2 mount {} of this mount namespace", mount.display()))
    })?;
    Ok(Target::cgroup(canon.display().to_string(), meta.ino(), level))
}

/// A cgroup attachment that state files remember under `path` (its directory
/// may be gone), else the live cgroup.
pub fn resolve_cgroup_or_state(path: &Path) -> Result<Target> {
    match resolve_cgroup(path) {
        Ok(t) => Ok(t),
        Err(e) => {
            let shown = path.display().to_string();
            let found = state::all_states()?.into_iter().find(|s| s.hook == Hook::Cgroup && s.iface == shown);
            match found {
                Some(s) => Ok(Target::cgroup(s.iface, s.cgroup_id, s.cgroup_level)),
                None => Err(e),
            }
        }
    }
}

/// A systemd unit's cgroup: its ControlGroup as systemd reports it, below the
/// cgroup v2 mount; without systemd, the convention (system.slice/UNIT).
pub fn unit_cgroup(unit: &str) -> Result<PathBuf> {
    let mount = cgroup2_mount()?;
    let out = std::process::Command::new("systemctl").args(["show", "--property=ControlGroup", "--value", unit]).output();
    let rel = match out {
        Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty() => {
            String::from_utf8_lossy(&o.stdout).trim().trim_start_matches('/').to_string()
        }
        Ok(o) if o.status.success() => {
            return Err(DataplaneError::Other(format!(
                "unit {unit} has no cgroup: it is not running (systemctl start {unit}), or not a service, scope or slice"
            )));
        }
        _ => format!("system.slice/{unit}"),
    };
    Ok(mount.join(rel))
}

/// A process as egress's cgroup hooks see it: its cgroup (v2) and the
/// nearest cgroup at or above it with a rule set of egress's, which decides
/// for its sockets.
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    /// The process's own cgroup (a path under the cgroup v2 mount).
    pub cgroup: PathBuf,
    /// The cgroup whose rule set decides, if any.
    pub decided_by: Option<Target>,
}

/// Finds process `pid`'s cgroup (/proc/PID/cgroup, the v2 line "0::/...")
/// and the nearest attachment at or above it.
pub fn process(pid: u32) -> Result<Process> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let text = std::fs::read_to_string(proc_dir.join("cgroup"))
        .map_err(|e| DataplaneError::Other(format!("process {pid}: {e} (is it running?)")))?;
    let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default().trim().to_string();
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| {
        DataplaneError::Other(format!("process {pid} ({comm}) is in no cgroup v2 (no \"0::\" line in /proc/{pid}/cgroup)"))
    })?;
    let cgroup = cgroup2_mount()?.join(rel.trim_start_matches('/'));
    let attached: Vec<state::State> = state::all_states()?.into_iter().filter(|s| s.hook == Hook::Cgroup).collect();
    let decided_by = cgroup.ancestors().find_map(|dir| {
        let id = std::fs::metadata(dir).ok()?.ino();
        attached
            .iter()
            .find(|s| s.cgroup_id == id && Path::new(&s.iface) == dir)
            .map(|s| Target::cgroup(s.iface.clone(), s.cgroup_id, s.cgroup_level))
    });
    Ok(Process { pid, comm, cgroup, decided_by })
}

/// Attaches the loaded cgroup programs to the cgroup (or replaces the
/// programs of its pinned links), then records it in CG_OWNERS.
pub(super) fn switch(loaded: &mut Loaded, t: &Target, key: &str) -> Result<Attachment> {
    let (packet, companion) = (loaded.cgroup_program(), loaded.companion);
    let ebpf = &mut loaded.ebpf;
    let dir = pin_dir(key);
    let gone =
        |what: &str| DataplaneError::Other(format!("cgroup {} {what} during apply: nothing attached, the rules are not applied", t.iface));
    let cg = File::open(&t.iface).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => gone("was removed"),
        _ => DataplaneError::Other(format!("open cgroup {}: {e}", t.iface)),
    })?;
    // The directory must still be the cgroup resolved (and named in CG_ID).
    if cg.metadata().map(|m| m.ino()).ok() != Some(t.cgroup_id) {
        return Err(gone("was removed and made again"));
    }
    let mut created: Vec<PathBuf> = Vec::new();
    let mut go = || -> Result<()> {
        // The companion first, so that the packet hook finds the connections
        // it follows and the names it learned.
        let mut skb = vec![(packet, "link", CgroupSkbAttachType::Egress)];
        if companion {
            skb.insert(0, (CGROUP_TRACK_PROGRAM_NAME, COMPANION, CgroupSkbAttachType::Ingress));
        }
        for (name, pin, kind) in skb {
            let path = dir.join(pin);
            let prog: &mut CgroupSkb = program(ebpf, name)?.try_into().map_err(prog_err(format!("{name} program")))?;
            if path.exists() {
                let fd = prog.fd().map_err(prog_err("program fd"))?.as_fd().as_raw_fd() as u32;
                link::update_pinned(&path, fd).map_err(io_err(format!("replace the {name} program on {} (bpf_link_update)", t.iface)))?;
                continue;
            }
            let id = prog.attach(&cg, kind, CgroupAttachMode::Single).map_err(prog_err(format!("attach {name} to cgroup {}", t.iface)))?;
            let l = prog.take_link(id).map_err(prog_err("take link"))?;
            let fd = FdLink::try_from(l).map_err(|source| DataplaneError::Link { op: "cgroup link handle".into(), source })?;
            fd.pin(&path).map_err(pin_err(format!("pin the link at {}", path.display())))?;
            created.push(path);
        }
        for (name, pin) in CALLS {
            let path = dir.join(pin);
            let prog: &mut CgroupSockAddr = program(ebpf, name)?.try_into().map_err(prog_err(format!("{name} program")))?;
            if path.exists() {
                let fd = prog.fd().map_err(prog_err("program fd"))?.as_fd().as_raw_fd() as u32;
                link::update_pinned(&path, fd).map_err(io_err(format!("replace the {pin} program on {} (bpf_link_update)", t.iface)))?;
                continue;
            }
            let id =
                prog.attach(&cg, CgroupAttachMode::Single).map_err(prog_err(format!("attach to cgroup {} (cgroup/{pin})", t.iface)))?;
            let l = prog.take_link(id).map_err(prog_err("take link"))?;
            let fd = FdLink::try_from(l).map_err(|source| DataplaneError::Link { op: "cgroup link handle".into(), source })?;
            fd.pin(&path).map_err(pin_err(format!("pin the link at {}", path.display())))?;
            created.push(path);
        }
        set_owner(t.cgroup_id, true)?;
        // Removed meanwhile (between the open and the attach)? Its links
        // would hold nothing: undo.
        if std::fs::metadata(&t.iface).map(|m| m.ino()).ok() != Some(t.cgroup_id) {
            let _ = set_owner(t.cgroup_id, false);
            return Err(gone("was removed"));
        }
        Ok(())
    };
    match go() {
        Ok(()) => {
            if !companion {
                // Neither stateful nor naming domains: the companion goes.
                let _ = link::unlink("", &dir.join(COMPANION), None, false);
            }
            Ok(Attachment::link("cgroup"))
        }
        Err(e) => {
            // Nothing left behind: the links made by this call go again.
            for p in &created {
                let _ = link::unlink("", p, None, false);
            }
            Err(e)
        }
    }
}

fn program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| DataplaneError::Other(format!("program {name} missing from the eBPF object")))
}

use std::os::fd::AsFd as _;

/// Records (or forgets) the cgroup in the host's CG_OWNERS map.
pub(super) fn set_owner(id: u64, on: bool) -> Result<()> {
    let path = owners_path();
    let Ok(data) = MapData::from_pin(&path) else {
        if on {
            return Err(DataplaneError::Other(format!("the cgroup owners map is not pinned at {}", path.display())));
        }
        return Ok(());
    };
    let mut m: HashMap<MapData, u64, u32> = HashMap::try_from(Map::HashMap(data)).map_err(map_err("open CG_OWNERS"))?;
    if on {
        m.insert(id, 1, 0).map_err(map_err("write CG_OWNERS"))
    } else {
        let _ = m.remove(&id);
        Ok(())
    }
}

/// Removes a cgroup attachment's links (its programs stop); true if there were any.
pub(super) fn unlink_all(key: &str, id: u64) -> Result<bool> {
    // First the record: ancestors' rule sets take over before the programs go.
    set_owner(id, false)?;
    let dir = pin_dir(key);
    let mut found = false;
    for pin in ["link", COMPANION].into_iter().chain(CALLS.iter().map(|(_, p)| *p)) {
        found |= link::unlink("", &dir.join(pin), None, false)?;
    }
    Ok(found)
}

/// Whether the attachment's links still reach its cgroup. A removed cgroup:
/// its directory is gone at once (or holds another cgroup, of another id),
/// and its links read id 0 once the kernel has released it, which may be
/// later (sockets keep a dying cgroup).
pub(super) fn health(key: &str, id: u64, path: &str) -> LinkHealth {
    let here = std::fs::metadata(path).map(|m| m.ino() == id).unwrap_or(false);
    match link::link_target(&pin_dir(key).join("link")) {
        None => LinkHealth::Missing,
        Some(c) if c == id && here => LinkHealth::Attached,
        Some(_) => LinkHealth::Severed,
    }
}
