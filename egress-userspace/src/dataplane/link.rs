//! The attachment itself: attach a loaded classifier to an interface's egress
//! hook (a pinned tcx link, or a clsact filter on kernels before 6.6), replace
//! its program atomically, detach it, tell whether a pinned link still reaches
//! its interface, and wait until no CPU runs a replaced program any more.

use std::{ffi::CString, fs, io, os::unix::ffi::OsStrExt as _, path::Path};

use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{self, SchedClassifierLink, TcHandle},
};

use super::{BPF_MAP_UPDATE_ELEM, DataplaneError, ElemAttr, Result, bpf_sys, io_err, pin_err, prog_err};

/// How an attachment was made: "tcx" (a pinned link) or "clsact" (a netlink
/// filter, identified by priority and handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Hook {
    pub kind: String,
    pub nl_priority: Option<u16>,
    pub nl_handle: Option<u32>,
}

/// Puts `prog` on the interface's egress hook: replaces the program of the link
/// pinned at `lpath` in one bpf_link_update (each packet runs the old program or
/// the new one), or replaces the clsact filter `prev_nl`, or attaches afresh.
pub(super) fn switch(prog: &mut SchedClassifier, iface: &str, lpath: &Path, prev_nl: Option<(u16, u32)>) -> Result<Hook> {
    if lpath.exists() {
        let pinned = PinnedLink::from_pin(lpath)
            .map_err(|source| DataplaneError::Link { op: format!("open the link pinned at {}", lpath.display()), source })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|source| DataplaneError::Link { op: format!("open the link pinned at {}", lpath.display()), source })?;
        let id = prog.attach_to_link(link).map_err(prog_err(format!("replace the classifier on {iface} (bpf_link_update)")))?;
        // The link stays pinned; forget our handle without detaching.
        let l = prog.take_link(id).map_err(prog_err("take link"))?;
        drop(FdLink::try_from(l).map_err(|source| DataplaneError::Link { op: "link handle".into(), source })?);
        return Ok(Hook { kind: "tcx".into(), nl_priority: None, nl_handle: None });
    }
    if let Some((prio, handle)) = prev_nl {
        // clsact fallback: replace the filter with the same priority and handle.
        let link = SchedClassifierLink::attached(iface, TcAttachType::Egress, prio, TcHandle::from(handle), None)
            .map_err(io_err(format!("find the clsact filter on {iface}")))?;
        let id = prog.attach_to_link(link).map_err(prog_err(format!("replace the clsact filter on {iface}")))?;
        let l = prog.take_link(id).map_err(prog_err("take link"))?;
        // Netlink filters stay until deleted; dropping the handle would detach it.
        std::mem::forget(l);
        return Ok(Hook { kind: "clsact".into(), nl_priority: Some(prio), nl_handle: Some(handle) });
    }
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
        fd.pin(lpath).map_err(pin_err(format!("pin the link at {}", lpath.display())))?;
        Ok(Hook { kind: "tcx".into(), nl_priority: None, nl_handle: None })
    } else {
        let nl_priority = Some(l.priority().map_err(prog_err("clsact filter priority"))?);
        let nl_handle = Some(u32::from(l.handle().map_err(prog_err("clsact filter handle"))?));
        // Netlink filters stay until deleted; dropping the handle would detach it.
        std::mem::forget(l);
        Ok(Hook { kind: "clsact".into(), nl_priority, nl_handle })
    }
}

fn kernel_has_tcx() -> bool {
    match aya::util::KernelVersion::current() {
        Ok(v) => v >= aya::util::KernelVersion::new(6, 6, 0),
        Err(_) => true,
    }
}

/// Removes the attachment: unpins the link (its last reference: the program is
/// detached) or deletes the clsact filter. True if there was something to remove.
pub(super) fn unlink(iface: &str, lpath: &Path, nl: Option<(u16, u32)>) -> Result<bool> {
    let mut found = false;
    if lpath.exists() {
        found = true;
        match PinnedLink::from_pin(lpath) {
            Ok(pinned) => {
                let fd = pinned.unpin().map_err(io_err(format!("unpin {}", lpath.display())))?;
                drop(fd);
            }
            // Not a link we can open (a stale file): remove it all the same.
            Err(_) => {
                let _ = fs::remove_file(lpath);
            }
        }
    }
    if let Some((prio, handle)) = nl {
        found = true;
        if let Ok(link) = SchedClassifierLink::attached(iface, TcAttachType::Egress, prio, TcHandle::from(handle), None) {
            use aya::programs::links::Link as _;
            let _ = link.detach();
        }
    }
    Ok(found)
}

/// Whether an attachment still filters its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkHealth {
    /// The link is pinned and attached to the interface (or the clsact filter is recorded).
    Attached,
    /// The link is pinned but its interface is gone (deleted, or its namespace
    /// deleted): nothing is filtered, and the link cannot be updated (ENOLINK).
    Severed,
    /// No link is pinned.
    Missing,
}

impl LinkHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkHealth::Attached => "attached",
            LinkHealth::Severed => "severed",
            LinkHealth::Missing => "missing",
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_CREATE: libc::c_long = 0;

/// An fd that closes itself.
struct Fd(i32);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

/// The health of the tcx link pinned at `lpath`, for an attachment made on `ifindex`.
/// The kernel clears a tcx link's interface when the device goes away
/// (`bpf_link_info.tcx.ifindex` reads 0).
pub(super) fn health(lpath: &Path, ifindex: u32, clsact: bool) -> LinkHealth {
    if clsact {
        return LinkHealth::Attached;
    }
    let Ok(c) = CString::new(lpath.as_os_str().as_bytes()) else {
        return LinkHealth::Missing;
    };
    let mut get = ObjGetAttr { pathname: c.as_ptr() as u64, ..ObjGetAttr::default() };
    let fd = match bpf_sys(BPF_OBJ_GET, &mut get) {
        Ok(fd) => Fd(fd as i32),
        Err(_) => return LinkHealth::Missing,
    };
    // struct bpf_link_info: type, id, prog_id (u32 each), then a union aligned to
    // 8 bytes whose tcx member starts with the ifindex (offset 16).
    let mut info = [0u64; 16];
    let mut attr = InfoAttr { bpf_fd: fd.0 as u32, info_len: std::mem::size_of_val(&info) as u32, info: info.as_mut_ptr() as u64 };
    if bpf_sys(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_err() {
        return LinkHealth::Missing;
    }
    let link_ifindex = info[2] as u32;
    if link_ifindex == 0 || link_ifindex != ifindex { LinkHealth::Severed } else { LinkHealth::Attached }
}

/// Returns once every BPF program that was running when it was called has
/// finished. After a `bpf_link_update`, a CPU may still be inside the old program
/// (it runs under RCU); once this returns, the old program's maps receive no
/// more writes, so its counters are final. The kernel waits for an RCU grace
/// period on every update of a map-in-map from user space (`maybe_wait_bpf_programs`):
/// a one-slot array of maps, updated once, is the barrier.
pub fn wait_for_running_programs() -> Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
    }
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
    let barrier = |e: io::Error| DataplaneError::Io { op: "wait for running BPF programs (RCU barrier)".into(), source: e };
    let mut a = CreateAttr { map_type: BPF_MAP_TYPE_ARRAY, key_size: 4, value_size: 4, max_entries: 1, ..CreateAttr::default() };
    let inner = Fd(bpf_sys(BPF_MAP_CREATE, &mut a).map_err(barrier)? as i32);
    let mut a = CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd: inner.0 as u32,
        ..CreateAttr::default()
    };
    let outer = Fd(bpf_sys(BPF_MAP_CREATE, &mut a).map_err(barrier)? as i32);
    let key: u32 = 0;
    let value: u32 = inner.0 as u32;
    let mut u =
        ElemAttr { map_fd: outer.0 as u32, key: &key as *const u32 as u64, value: &value as *const u32 as u64, ..ElemAttr::default() };
    bpf_sys(BPF_MAP_UPDATE_ELEM, &mut u).map_err(barrier)?;
    Ok(())
}
