//! The process's environment: mount namespace and bpffs, network namespaces
//! (cookies, names, `--netns`), interfaces (index, link type).

use std::{
    ffi::CString,
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
};

use super::{DataplaneError, Result, io_err, state};
use crate::hook::Hook;

pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// getsockopt(SOL_SOCKET, SO_NETNS_COOKIE): the namespace's u64 cookie (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;
/// Raw IP link type (not in the libc crate).
const ARPHRD_RAWIP: u16 = 519;

/// `true`: a command that prints ends quietly when its reader goes away
/// (`egress status | head -c 0`), as grep does: SIGPIPE back to its default
/// action (Rust ignores it, which turns a closed pipe into a panic in
/// `println!`). `false` for `egress run`: a service outlives a reader that
/// hangs up (the write fails instead).
pub fn closed_pipe_ends_process(yes: bool) {
    // SAFETY: setting a signal's disposition to default or ignore has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, if yes { libc::SIG_DFL } else { libc::SIG_IGN });
    }
}

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
                // A mount namespace is joined by a single-threaded process only
                // (EINVAL otherwise). Threads the process used before (the linter,
                // the chunked parser) are joined, but a joined thread can still be
                // exiting in the kernel for a moment: wait until it is gone.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                loop {
                    // SAFETY: plain syscall on a valid fd.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) } == 0 {
                        break;
                    }
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINVAL) && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        continue;
                    }
                    let threads = thread_count();
                    let why = if threads > 1 { format!(" with {threads} threads") } else { String::new() };
                    return Err(io_err(format!("join the mount namespace of process {ppid} ({ns}){why}"))(e));
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

/// Threads of this process still known to the kernel.
fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1)
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

/// The cookie of the calling thread's network namespace: a number the kernel
/// never gives to another namespace while it runs (unlike the inode number of
/// /proc/self/ns/net, which is recycled).
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("open a socket to read the network namespace cookie")(io::Error::last_os_error()));
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of their sizes.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(io_err("read the network namespace cookie (SO_NETNS_COOKIE, Linux >= 5.14)")(err));
    }
    Ok(cookie)
}

/// A human name for the calling thread's network namespace: its name under
/// /run/netns (as `ip netns` knows it), "host" for the init namespace, else
/// "net:[INODE]".
pub fn netns_name() -> String {
    let Ok(ours) = fs::metadata("/proc/self/ns/net") else {
        return "unknown".into();
    };
    let same = |p: &std::path::Path| fs::metadata(p).is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino());
    if let Ok(rd) = fs::read_dir("/run/netns") {
        let mut names: Vec<_> = rd.flatten().filter(|e| same(&e.path())).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        if let Some(n) = names.into_iter().next() {
            return n;
        }
    }
    if same(std::path::Path::new("/proc/1/ns/net")) {
        return "host".into();
    }
    format!("net:[{}]", ours.ino())
}

/// Joins another network namespace for the rest of the process: `--netns` given
/// as a name under /run/netns, a path (a bind mount or /proc/PID/ns/net), or a
/// process id. Must run before any thread is started.
pub fn enter_netns(spec: &str) -> Result<()> {
    let path = if spec.contains('/') {
        spec.to_string()
    } else if spec.chars().all(|c| c.is_ascii_digit()) {
        format!("/proc/{spec}/ns/net")
    } else {
        format!("/run/netns/{spec}")
    };
    let f = fs::File::open(&path).map_err(|e| {
        DataplaneError::Other(format!(
            "--netns {spec}: cannot open {path}: {e} (give a name from `ip netns list`, a path, or a process id)"
        ))
    })?;
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io_err(format!("--netns {spec}: join the network namespace {path}"))(io::Error::last_os_error()));
    }
    tracing::debug!(path, "joined network namespace");
    Ok(())
}

/// An interface as egress addresses it: the namespace (cookie, never reused) and
/// the interface index in it, plus names for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub iface: String,
    pub ifindex: u32,
    pub netns_cookie: u64,
    /// Name of the namespace (see [`netns_name`]).
    pub netns: String,
    /// Which of the interface's hooks ([`Hook::Cgroup`]: a cgroup, whose path
    /// is in `iface`).
    pub hook: Hook,
    /// A cgroup's id and level (0 = the hierarchy's root); 0 for interfaces.
    pub cgroup_id: u64,
    pub cgroup_level: u32,
}

impl Target {
    /// The attachment's key: pins under /sys/fs/bpf/egress/KEY, state in
    /// /run/egress/KEY.json. "COOKIE-IFINDEX" for tc-egress, with "-tc-ingress" or
    /// "-xdp" appended for the other hooks; "cgroup-ID" for a cgroup.
    pub fn key(&self) -> String {
        if self.hook == Hook::Cgroup {
            return format!("cgroup-{}", self.cgroup_id);
        }
        format!("{}-{}{}", self.netns_cookie, self.ifindex, self.hook.key_suffix())
    }

    /// A cgroup (v2) by canonical path, id and level.
    pub fn cgroup(path: String, id: u64, level: u32) -> Target {
        Target { iface: path, ifindex: 0, netns_cookie: 0, netns: String::new(), hook: Hook::Cgroup, cgroup_id: id, cgroup_level: level }
    }

    /// What people call it: "interface eth0 (tc-egress)" or "cgroup /sys/fs/...".
    pub fn describe(&self) -> String {
        match self.hook {
            Hook::Cgroup => format!("cgroup {}", self.iface),
            h => format!("{} ({h})", self.iface),
        }
    }
}

/// The hook `hook` of the interface named `iface` in the calling thread's network namespace.
pub fn resolve(iface: &str, hook: Hook) -> Result<Target> {
    Ok(Target {
        iface: iface.to_string(),
        ifindex: ifindex(iface)?,
        netns_cookie: netns_cookie()?,
        netns: netns_name(),
        hook,
        cgroup_id: 0,
        cgroup_level: 0,
    })
}

/// As [`resolve`]; when the interface is gone, the attachment that state files
/// remember under that name and hook in this namespace (so `detach` and
/// `counters` still reach rules whose interface was deleted).
pub fn resolve_or_state(iface: &str, hook: Hook) -> Result<Target> {
    match resolve(iface, hook) {
        Ok(t) => Ok(t),
        Err(e) => {
            let cookie = netns_cookie()?;
            let found = state::all_states()?.into_iter().find(|s| s.iface == iface && s.netns_cookie == cookie && s.hook == hook);
            match found {
                Some(s) => Ok(Target {
                    iface: s.iface,
                    ifindex: s.ifindex,
                    netns_cookie: s.netns_cookie,
                    netns: s.netns,
                    hook,
                    cgroup_id: 0,
                    cgroup_level: 0,
                }),
                None => Err(e),
            }
        }
    }
}

/// Interface index, or a clear error naming the interface.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = CString::new(iface).map_err(|_| DataplaneError::Other(format!("bad interface name '{iface}'")))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DataplaneError::Other(format!("no interface '{iface}' in network namespace {} (see `ip link`)", netns_name())));
    }
    Ok(idx)
}

/// Whether frames on the interface start with an Ethernet header. Asked of the
/// kernel through a socket of this namespace (SIOCGIFHWADDR), not /sys, which may
/// show another namespace's devices.
pub fn has_ethernet(iface: &str) -> Result<bool> {
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("open a socket to read the link type")(io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    // SAFETY: req is a valid ifreq for SIOCGIFHWADDR.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(io_err(format!("read the link type of {iface}"))(err));
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    match family {
        // ARPHRD_ETHER and ARPHRD_LOOPBACK carry an Ethernet header.
        libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => Ok(true),
        // ARPHRD_NONE (tun, WireGuard), ARPHRD_RAWIP: raw IP.
        libc::ARPHRD_NONE | ARPHRD_RAWIP => Ok(false),
        other => Err(DataplaneError::Other(format!(
            "interface '{iface}' has link type {other}; egress supports Ethernet and raw-IP (tun, WireGuard) interfaces"
        ))),
    }
}

/// The addresses of an interface in the current network namespace, in the
/// kernel's order (an IPv4 interface's primary address first).
pub fn iface_addresses(iface: &str) -> Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io_err("list the interfaces' addresses (getifaddrs)")(io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name.
        if unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: the family says which sockaddr it is.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(std::net::IpAddr::from(sa.sin_addr.s_addr.to_ne_bytes()));
            }
            libc::AF_INET6 => {
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(std::net::IpAddr::from(sa.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
