//! The attachment itself: attach a loaded classifier to one of an interface's
//! hooks (TC egress or ingress: a pinned tcx link, or a clsact filter on kernels
//! before 6.6; XDP: a pinned XDP link, native or generic), replace its program
//! atomically, detach it, tell whether a pinned link still reaches its
//! interface, and wait until no CPU runs a replaced program any more.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};

use super::{BPF_MAP_UPDATE_ELEM, DataplaneError, ElemAttr, Result, bpf_sys, io_err, pin_err, prog_err};

/// How an attachment was made: `mode` "tcx" (a pinned link) or "clsact" (a
/// netlink filter, identified by priority and handle) on TC hooks, "native" or
/// "generic" (a pinned XDP link) on XDP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Attachment {
    pub mode: String,
    pub nl_priority: Option<u16>,
    pub nl_handle: Option<u32>,
}

impl Attachment {
    pub(super) fn link(mode: &str) -> Attachment {
        Attachment { mode: mode.into(), nl_priority: None, nl_handle: None }
    }
}

fn tc_type(ingress: bool) -> TcAttachType {
    if ingress { TcAttachType::Ingress } else { TcAttachType::Egress }
}

/// Puts `prog` on the interface's TC egress (or ingress) hook: replaces the
/// program of the link pinned at `lpath` in one bpf_link_update (each packet runs
/// the old program or the new one), or replaces the clsact filter `prev_nl`, or
/// attaches afresh.
pub(super) fn switch_tc(
    prog: &mut SchedClassifier,
    iface: &str,
    ingress: bool,
    lpath: &Path,
    prev_nl: Option<(u16, u32)>,
) -> Result<Attachment> {
    let dir = if ingress { "ingress" } else { "egress" };
    if lpath.exists() {
        let pinned = PinnedLink::from_pin(lpath)
            .map_err(|source| DataplaneError::Link { op: format!("open the link pinned at {}", lpath.display()), source })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|source| DataplaneError::Link { op: format!("open the link pinned at {}", lpath.display()), source })?;
        let id = prog.attach_to_link(link).map_err(prog_err(format!("replace the classifier on {iface} (bpf_link_update)")))?;
        // The link stays pinned; forget our handle without detaching.
        let l = prog.take_link(id).map_err(prog_err("take link"))?;
        drop(FdLink::try_from(l).map_err(|source| DataplaneError::Link { op: "link handle".into(), source })?);
        return Ok(Attachment::link("tcx"));
    }
    if let Some((prio, handle)) = prev_nl {
        // clsact fallback: replace the filter with the same priority and handle.
        let link = SchedClassifierLink::attached(iface, tc_type(ingress), prio, TcHandle::from(handle), None)
            .map_err(io_err(format!("find the clsact filter on {iface}")))?;
        let id = prog.attach_to_link(link).map_err(prog_err(format!("replace the clsact filter on {iface}")))?;
        let l = prog.take_link(id).map_err(prog_err("take link"))?;
        // Netlink filters stay until deleted; dropping the handle would detach it.
        std::mem::forget(l);
        return Ok(Attachment { mode: "clsact".into(), nl_priority: Some(prio), nl_handle: Some(handle) });
    }
    let tcx = kernel_has_tcx();
    if !tcx {
        // Older kernels: a clsact qdisc with a direct-action filter.
        // Already there (another filter of ours, or someone else's): fine.
        let exists = |e: &tc::TcError| match e {
            tc::TcError::AlreadyAttached => true,
            tc::TcError::NetlinkError(n) => n.raw_os_error() == Some(libc::EEXIST),
            _ => false,
        };
        if let Err(e) = tc::qdisc_add_clsact(iface)
            && !exists(&e)
        {
            return Err(DataplaneError::Other(format!("add clsact qdisc to {iface}: {e}")));
        }
    }
    let options = if tcx { TcAttachOptions::TcxOrder(LinkOrder::default()) } else { TcAttachOptions::Netlink(NlOptions::default()) };
    let id = prog
        .attach_with_options(iface, tc_type(ingress), options)
        .map_err(prog_err(format!("attach the classifier to {iface}'s TC {dir} hook")))?;
    let l = prog.take_link(id).map_err(prog_err("take link"))?;
    if tcx {
        let fd = FdLink::try_from(l).map_err(|source| DataplaneError::Link { op: "tcx link handle".into(), source })?;
        fd.pin(lpath).map_err(pin_err(format!("pin the link at {}", lpath.display())))?;
        Ok(Attachment::link("tcx"))
    } else {
        let nl_priority = Some(l.priority().map_err(prog_err("clsact filter priority"))?);
        let nl_handle = Some(u32::from(l.handle().map_err(prog_err("clsact filter handle"))?));
        // Netlink filters stay until deleted; dropping the handle would detach it.
        std::mem::forget(l);
        Ok(Attachment { mode: "clsact".into(), nl_priority, nl_handle })
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Puts `prog` on the interface's XDP hook: replaces the program of the XDP link
/// pinned at `lpath` in one bpf_link_update (the mode stays `prev_mode`), or
/// creates a link, native (in the driver) where the driver supports it, generic
/// (in the stack, after the skb is built) otherwise, and pins it.
pub(super) fn switch_xdp(prog: &mut Xdp, iface: &str, ifindex: u32, lpath: &Path, prev_mode: Option<&str>) -> Result<Attachment> {
    let prog_fd = prog.fd().map_err(prog_err("XDP program fd"))?.as_fd().as_raw_fd() as u32;
    if lpath.exists() {
        let link = open_pinned(lpath).map_err(io_err(format!("open the XDP link pinned at {}", lpath.display())))?;
        let mut u = LinkUpdateAttr { link_fd: link.0 as u32, new_prog_fd: prog_fd, ..LinkUpdateAttr::default() };
        bpf_sys(BPF_LINK_UPDATE, &mut u).map_err(io_err(format!("replace the XDP program on {iface} (bpf_link_update)")))?;
        return Ok(Attachment::link(prev_mode.unwrap_or("native")));
    }
    let create = |flags: u32| -> io::Result<Fd> {
        let mut a = LinkCreateAttr { prog_fd, target_ifindex: ifindex, attach_type: BPF_XDP, flags };
        bpf_sys(BPF_LINK_CREATE, &mut a).map(|fd| Fd(fd as i32))
    };
    let busy = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST));
    let (link, mode) = match create(XDP_FLAGS_DRV_MODE) {
        Ok(fd) => (fd, "native"),
        Err(e) if busy(&e) => return Err(xdp_busy(iface, e)),
        Err(native) => match create(XDP_FLAGS_SKB_MODE) {
            Ok(fd) => {
                tracing::info!(iface, "native XDP refused ({native}); attached in generic mode");
                (fd, "generic")
            }
            Err(e) if busy(&e) => return Err(xdp_busy(iface, e)),
            Err(e) => {
                return Err(DataplaneError::Other(format!(
                    "interface {iface} cannot take an XDP program: native mode: {native}; generic mode: {e}"
                )));
            }
        },
    };
    let c = CString::new(lpath.as_os_str().as_bytes()).map_err(|_| DataplaneError::Other(format!("bad pin path {}", lpath.display())))?;
    let mut pin = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: link.0 as u32, ..ObjAttr::default() };
    // Closing `link` without a pin detaches the program again.
    bpf_sys(BPF_OBJ_PIN, &mut pin).map_err(io_err(format!("pin the XDP link at {}", lpath.display())))?;
    Ok(Attachment::link(mode))
}

fn xdp_busy(iface: &str, e: io::Error) -> DataplaneError {
    DataplaneError::Other(format!(
        "interface {iface} cannot take egress's XDP program: another XDP program is attached to it ({e}); \
         see `ip link show {iface}` (prog/xdp) and remove it first, or use --hook tc-ingress"
    ))
}

fn open_pinned(path: &Path) -> io::Result<Fd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut get = ObjAttr { pathname: c.as_ptr() as u64, ..ObjAttr::default() };
    bpf_sys(BPF_OBJ_GET, &mut get).map(|fd| Fd(fd as i32))
}

/// Replaces the program of the link pinned at `lpath` (bpf_link_update: each
/// packet or call runs the old program or the new one).
pub(super) fn update_pinned(lpath: &Path, prog_fd: u32) -> io::Result<()> {
    let link = open_pinned(lpath)?;
    let mut u = LinkUpdateAttr { link_fd: link.0 as u32, new_prog_fd: prog_fd, ..LinkUpdateAttr::default() };
    bpf_sys(BPF_LINK_UPDATE, &mut u).map(|_| ())
}

/// What the link pinned at `lpath` is attached to: the first word of
/// `bpf_link_info`'s union (offset 16): a tcx or XDP link's ifindex, a cgroup
/// link's cgroup id; 0 once that is gone. None: no link there.
pub(super) fn link_target(lpath: &Path) -> Option<u64> {
    let fd = open_pinned(lpath).ok()?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then a union aligned to 8 bytes.
    let mut info = [0u64; 16];
    let mut attr = InfoAttr { bpf_fd: fd.0 as u32, info_len: std::mem::size_of_val(&info) as u32, info: info.as_mut_ptr() as u64 };
    bpf_sys(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    Some(info[2])
}

/// Whether TC programs are attached as tcx links (kernel 6.6 and later) or as
/// clsact direct-action filters. `EGRESS_TC_ATTACH=clsact` forces the filters
/// (for tools that only see clsact, and to test the older kernels' path).
fn kernel_has_tcx() -> bool {
    if std::env::var("EGRESS_TC_ATTACH").is_ok_and(|v| v == "clsact") {
        return false;
    }
    match aya::util::KernelVersion::current() {
        Ok(v) => v >= aya::util::KernelVersion::new(6, 6, 0),
        Err(_) => true,
    }
}

/// Removes the attachment: unpins the link (its last reference: the program is
/// detached) or deletes the clsact filter (of the ingress hook if `ingress`).
/// True if there was something to remove.
pub(super) fn unlink(iface: &str, lpath: &Path, nl: Option<(u16, u32)>, ingress: bool) -> Result<bool> {
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
        if let Ok(link) = SchedClassifierLink::attached(iface, tc_type(ingress), prio, TcHandle::from(handle), None) {
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
/// `union bpf_attr` as BPF_OBJ_PIN and BPF_OBJ_GET read it.
struct ObjAttr {
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
    // The tcx and xdp members of the link info's union start with the ifindex.
    let Some(target) = link_target(lpath) else {
        return LinkHealth::Missing;
    };
    let link_ifindex = target as u32;
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
