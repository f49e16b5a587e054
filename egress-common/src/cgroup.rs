//! Workload scope: rule sets on cgroups (v2). Program, map and global names the
//! loader and the program share, and the deny event of a refused socket call.

/// `cgroup_skb/egress`: every packet a socket of the cgroup (or a descendant) sends.
pub const CGROUP_SKB_PROGRAM_NAME: &str = "egress_cgroup";
/// A stateful rule set's packet hook, and its companion on `cgroup_skb/ingress`.
pub const CGROUP_SKB_SF_PROGRAM_NAME: &str = "egress_cgroup_sf";
pub const CGROUP_TRACK_PROGRAM_NAME: &str = "egress_cgroup_track";
/// The packet hook for a mode (`split`: stateful, or rules by name in debug
/// mode) and debug mode (the `_dbg` twins log why they drop a packet they
/// cannot parse). A stateless rule set by name attaches the call-free one,
/// which hands DNS queries and flow-cache misses on to `egress_cgroup_sf`
/// (DNS_TAIL_CG).
pub const fn cgroup_program(split: bool, debug: bool) -> &'static str {
    match (split, debug) {
        (false, false) => CGROUP_SKB_PROGRAM_NAME,
        (true, false) => CGROUP_SKB_SF_PROGRAM_NAME,
        (false, true) => "egress_cgroup_dbg",
        (true, true) => "egress_cgroup_sf_dbg",
    }
}
/// `cgroup/connect4|6` and `cgroup/sendmsg4|6`: a connect() or an unconnected
/// sendto() of the cgroup's processes, refused with EPERM when denied.
pub const CONNECT4_PROGRAM_NAME: &str = "egress_connect4";
pub const CONNECT6_PROGRAM_NAME: &str = "egress_connect6";
pub const SENDMSG4_PROGRAM_NAME: &str = "egress_sendmsg4";
pub const SENDMSG6_PROGRAM_NAME: &str = "egress_sendmsg6";
/// Passes every packet: the benchmark's cgroup_skb baseline (never attached by `egress`).
pub const CGROUP_PASS_PROGRAM_NAME: &str = "egress_cgroup_pass";

/// Every cgroup that has a rule set of egress's, by cgroup id (value 1). One
/// map for the host, pinned at `/sys/fs/bpf/egress/CG_OWNERS` and shared by
/// every cgroup attachment: an attachment's programs see every packet and call
/// of the cgroup's descendants too (the kernel runs the programs of every
/// ancestor), and hand over (allow) to a nearer cgroup that has a rule set of
/// its own, so that the nearest one decides.
pub const MAP_CG_OWNERS: &str = "CG_OWNERS";
pub const CG_MAX_OWNERS: u32 = 65_536;
/// How many levels below its own cgroup an attachment looks for a nearer one.
pub const CG_MAX_NEST: u32 = 16;

/// Load-time globals: the cgroup's id, its level (0 = the hierarchy's root), and
/// 1 when no rule names a source (a socket call whose source is not yet chosen
/// can then be decided before any packet exists).
pub const GLOBAL_CG_ID: &str = "CG_ID";
pub const GLOBAL_CG_LEVEL: &str = "CG_LEVEL";
pub const GLOBAL_SRC_ANY: &str = "SRC_ANY";

/// The deny event of a refused socket call: the packet event (no bytes, the
/// source as bound, 0 when not yet chosen) and the caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcDenyEvent {
    pub event: crate::DenyEvent,
    /// The caller's process id (tgid) and command name (NUL padded).
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<ProcDenyEvent>() == 64 + 24);
