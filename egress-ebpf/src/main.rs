//! egress: the classifier. Parses the packet, asks the flow verdict cache
//! (cache.rs) if the flow has been seen before (door.rs), on a miss runs the
//! three-stage lookup (classify.rs) and caches its result, counts the decision against its rule and returns it. One body, four
//! entry points: `egress_classify` (a TC program, attached to an interface's
//! egress or ingress hook) and `egress_xdp` (an XDP program: packets arriving on
//! the interface, before the stack), and their stateful twins `egress_classify_sf`
//! and `egress_xdp_sf`, which ask the connection table (conn.rs) first; frame.rs
//! hides the TC/XDP difference.
//!
//! A stateless rule set with rules by name attaches the call-free entry point
//! too: a DNS query or a flow-cache miss goes on to the split body by a tail
//! call (DNS_TAIL_TC / DNS_TAIL_XDP), so a cached flow costs what it costs
//! without names.
//!
//! Why twins: BPF gives an entry point and every chain of calls 512 bytes of
//! stack in all. The stateless body fits inlined into one frame (no BPF-to-BPF
//! call on the per-packet path); with the connection table's keys added it does
//! not, so the stateful body (`SPLIT = true`) runs the general parser, the
//! lookup's stages 1-2 and the cache write as BPF functions with frames of their
//! own. The loader picks the entry point by the rule set's mode.
//!
//! Fail mode: non-IP frames pass uncounted by rules (STATS non_ip_passed); IP
//! packets that cannot be parsed (truncated headers, impossible fields, too many
//! VLAN tags or IPv6 extension headers) are dropped and counted in STATS: a policy
//! that cannot read a packet must not let it through.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod cache;
#[cfg(target_arch = "bpf")]
mod cgroup;
#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod conn;
#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
pub(crate) mod door;
#[cfg(target_arch = "bpf")]
mod epoch;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod flat;
#[cfg(target_arch = "bpf")]
mod frame;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
pub(crate) mod program {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_DROP, XDP_PASS},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use aya_log_ebpf::info;
    use egress_common::{
        ACTION_ALLOW, ACTION_DENY, DEFAULT_COUNTER_SLOT, FLOW_LEARNED, PCLASS_NO_L4, PCLASS_TCP, PCLASS_UDP, STAT_BAD_HEADER,
        STAT_FRAGMENTS, STAT_NON_IP, STAT_TOO_MANY_HDRS, STAT_TRUNCATED, TC_ACT_SHOT, TC_ACT_UNSPEC,
    };

    use crate::{
        cache, classify,
        conn::{self, Seen},
        dns, door, epoch, events,
        frame::Frame,
        parse::{self, ParseError},
        stats,
    };

    /// Load-time global (set by user space): the default policy.
    #[unsafe(no_mangle)]
    static DEFAULT_ACTION: u32 = 0;
    /// Load-time global (set by user space): 1 if frames start with an Ethernet header.
    #[unsafe(no_mangle)]
    static HAS_ETH: u32 = 1;
    /// Load-time global (set by user space): the rule-set generation, never 0.
    #[unsafe(no_mangle)]
    static GENERATION: u32 = 1;
    /// Load-time global (set by user space): flow-cache slot mask, u32::MAX = off.
    #[unsafe(no_mangle)]
    static FLOW_MASK: u32 = u32::MAX;
    /// Load-time global (set by user space): 1 when the connection table is in
    /// use. The split body also serves stateless rule sets that name domains.
    #[unsafe(no_mangle)]
    pub(crate) static CONN_ON: u32 = 1;

    /// DNS's port, network order.
    pub(crate) const DNS_PORT: [u8; 2] = 53u16.to_be_bytes();

    #[classifier]
    pub fn egress_classify(ctx: TcContext) -> i32 {
        if decide::<_, false, false>(&ctx) { TC_ACT_UNSPEC } else { TC_ACT_SHOT }
    }

    /// The same classifier on the XDP hook: a deny drops the frame as it arrives.
    #[xdp]
    pub fn egress_xdp(ctx: XdpContext) -> u32 {
        if decide::<_, false, false>(&ctx) { XDP_PASS } else { XDP_DROP }
    }

    /// The classifier of a stateful rule set (TC).
    #[classifier]
    pub fn egress_classify_sf(ctx: TcContext) -> i32 {
        if decide::<_, true, false>(&ctx) { TC_ACT_UNSPEC } else { TC_ACT_SHOT }
    }

    /// The classifier of a stateful rule set (XDP).
    #[xdp]
    pub fn egress_xdp_sf(ctx: XdpContext) -> u32 {
        if decide::<_, true, false>(&ctx) { XDP_PASS } else { XDP_DROP }
    }

    /// Debug mode (`apply --debug`): the same four, logging through aya-log why
    /// a packet that cannot be parsed is dropped. Programs of their own because
    /// aya-log's writer is BPF-to-BPF calls, and any call in a program costs its
    /// per-packet path (see ARCHITECTURE.md): the programs above have none.
    #[classifier]
    pub fn egress_classify_dbg(ctx: TcContext) -> i32 {
        if decide::<_, false, true>(&ctx) { TC_ACT_UNSPEC } else { TC_ACT_SHOT }
    }

    /// Debug mode, XDP.
    #[xdp]
    pub fn egress_xdp_dbg(ctx: XdpContext) -> u32 {
        if decide::<_, false, true>(&ctx) { XDP_PASS } else { XDP_DROP }
    }

    /// Debug mode, stateful (TC).
    #[classifier]
    pub fn egress_classify_sf_dbg(ctx: TcContext) -> i32 {
        if decide::<_, true, true>(&ctx) { TC_ACT_UNSPEC } else { TC_ACT_SHOT }
    }

    /// Debug mode, stateful (XDP).
    #[xdp]
    pub fn egress_xdp_sf_dbg(ctx: XdpContext) -> u32 {
        if decide::<_, true, true>(&ctx) { XDP_PASS } else { XDP_DROP }
    }

    /// The companion, on the other direction of the interface (TC). Stateful
    /// mode: follows replies and connections opened from that side. Rules by
    /// name: learns from DNS answers before they are handed on. Never drops.
    #[classifier]
    pub fn egress_track(ctx: TcContext) -> i32 {
        let has_eth = unsafe { core::ptr::read_volatile(&HAS_ETH) } != 0;
        let mut pkt = parse::Packet::default();
        if parse::parse::<_, true>(&ctx, has_eth, &mut pkt).is_ok() {
            if unsafe { core::ptr::read_volatile(&CONN_ON) } != 0 {
                conn::other_side(&ctx, &pkt);
            }
            if dns::on() && (pkt.pclass == PCLASS_UDP || pkt.pclass == PCLASS_TCP) && pkt.sport == DNS_PORT {
                dns::answer(&ctx, &pkt);
            }
        }
        TC_ACT_UNSPEC
    }

    /// `egress explain`: what the classifier decides for a synthetic packet run
    /// through BPF_PROG_TEST_RUN against a live rule set's maps, changing nothing:
    /// no counter, no flow-cache write, no connection-table update. Never
    /// attached. Returns `slot << 3 | established << 2 | action` (the action
    /// code: allow, deny or audit), or -1 for a packet the classifier cannot parse.
    #[classifier]
    pub fn egress_explain(ctx: TcContext) -> i32 {
        let has_eth = unsafe { core::ptr::read_volatile(&HAS_ETH) } != 0;
        let mut pkt = parse::Packet::default();
        if parse::parse::<_, true>(&ctx, has_eth, &mut pkt).is_err() {
            return -1;
        }
        if unsafe { core::ptr::read_volatile(&CONN_ON) } != 0 && conn::peek(&ctx, &pkt) {
            return 1 << 2;
        }
        // A rule set hot reloads serve: its live half (never by name, so the
        // call-free lookup); any other: the split one, in half 0.
        let (slot, action) = if epoch::hot() {
            let Some(e) = epoch::now() else { return -1 };
            full::<false>(&pkt, e)
        } else {
            full_call(&pkt)
        };
        ((slot << 3) | (action & 3)) as i32
    }

    /// Does nothing and hands every frame on: the XDP baseline of the benchmark.
    #[xdp]
    pub fn egress_xdp_pass(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    /// Does nothing and hands every packet on: the baseline `cargo xtask bench`
    /// measures the classifier against (never attached by `egress`).
    #[classifier]
    pub fn egress_pass(_ctx: TcContext) -> i32 {
        TC_ACT_UNSPEC
    }

    /// Drops every packet: the benchmark's sink on the receiving side, so that the
    /// receiver's cost is small and the same for every variant (never used by `egress`).
    #[classifier]
    pub fn egress_sink(_ctx: TcContext) -> i32 {
        TC_ACT_SHOT
    }

    /// True: pass the packet; false: drop it. `SPLIT`: the stateful body;
    /// `DEBUG`: log why an unparseable packet is dropped.
    #[inline(always)]
    pub(crate) fn decide<C: Frame, const SPLIT: bool, const DEBUG: bool>(ctx: &C) -> bool {
        match try_classify::<C, SPLIT, DEBUG>(ctx) {
            Ok(pass) => pass,
            Err(e) => on_error::<C, DEBUG>(ctx, e),
        }
    }

    #[inline(always)]
    fn try_classify<C: Frame, const SPLIT: bool, const DEBUG: bool>(ctx: &C) -> Result<bool, ParseError> {
        // read_volatile: keep the loader-patched value instead of the compiled-in one.
        let has_eth = unsafe { core::ptr::read_volatile(&HAS_ETH) } != 0;
        let mut pkt = parse::Packet::default();
        parse::parse::<C, SPLIT>(ctx, has_eth, &mut pkt)?;
        // A stateless rule set with rules by name runs this call-free body and
        // hands a DNS query or a cache miss on to the split one (`to_split`), so
        // that a cached flow pays what it pays without names. The loader keeps
        // the branch out of every other rule set (DNS_ON is 0 there).
        let names = !SPLIT && !DEBUG && dns::on();
        if names && (pkt.pclass == PCLASS_UDP || pkt.pclass == PCLASS_TCP) && pkt.port == DNS_PORT {
            return Ok(to_split(ctx));
        }
        if pkt.pclass & PCLASS_NO_L4 != 0 && !names {
            stats::bump(STAT_FRAGMENTS);
        }
        // The half of the rule maps this packet is classified and counted by:
        // EPOCH, read once, in the call-free body of a rule set hot reloads
        // serve (epoch.rs); 0 (half 0) in the split body.
        let epoch = if SPLIT {
            0
        } else {
            match epoch::now() {
                Some(e) => e,
                None => return Err(ParseError::BadHeader),
            }
        };
        let counters = epoch::counters(epoch);
        let conn_on = SPLIT && unsafe { core::ptr::read_volatile(&CONN_ON) } != 0;
        if conn_on {
            match conn::filtered(ctx, &pkt) {
                Seen::Established => return Ok(true),
                Seen::Untracked if conn::related(ctx, &pkt) => return Ok(true),
                Seen::Untracked | Seen::New => {}
            }
        }
        if SPLIT && dns::on() && (pkt.pclass == PCLASS_UDP || pkt.pclass == PCLASS_TCP) && pkt.port == DNS_PORT {
            // A query: decided by the first rule naming its question, if that denies.
            let d = dns::query(ctx, &pkt);
            if d != u64::MAX {
                let (slot, action) = ((d >> 32) as u32, d as u32);
                dns::reported(ctx, &pkt, slot, action);
                stats::count_rule(ctx, 0, slot);
                return Ok(action != ACTION_DENY);
            }
        }
        let mask = unsafe { core::ptr::read_volatile(&FLOW_MASK) };
        let generation = egress_common::cache_generation(unsafe { core::ptr::read_volatile(&GENERATION) }, epoch);
        let h = if mask != u32::MAX { cache::hash(&pkt) } else { 0 };
        // The door (door.rs): a flow's first packet takes the full lookup and
        // leaves the cache alone. Not with rules by name: the call-free body
        // asks the cache before it hands a miss on to the split one, which
        // answers for the cache there.
        let door = if SPLIT { conn_on && !dns::on() } else { !names };
        let ask = mask != u32::MAX && (!door || if SPLIT { door_call(h) } else { door::admits(h) });
        let cached = match (ask, SPLIT) {
            (false, _) => None,
            (true, true) => match cached_call(&pkt, h & mask, generation) {
                (u32::MAX, _) => None,
                d => Some(d),
            },
            (true, false) => cache::get(&pkt, h & mask, generation),
        };
        let (slot, action) = match cached {
            Some(d) => {
                if names && pkt.pclass & PCLASS_NO_L4 != 0 {
                    stats::bump(STAT_FRAGMENTS);
                }
                d
            }
            None if names => return Ok(to_split(ctx)),
            None => {
                let (slot, action) = if SPLIT { full_call(&pkt) } else { full::<false>(&pkt, epoch) };
                if ask {
                    cache::put::<SPLIT>(&pkt, h & mask, generation, (slot, action));
                }
                (slot, action & !FLOW_LEARNED)
            }
        };
        stats::count_rule(ctx, counters, slot);
        if action != ACTION_ALLOW {
            // Deny or audit: reported (rate-limited); the allow path pays nothing.
            events::denied::<C, SPLIT>(ctx, &pkt, slot, action);
            if action == ACTION_DENY {
                return Ok(false);
            }
        }
        if conn_on {
            conn::track_new(ctx, &pkt, slot);
        }
        Ok(true)
    }

    /// Hands the packet on to the split program (a tail call, no return). The
    /// loader fills the program array before it attaches this program, so
    /// the call fails only if that went wrong: then the packet is dropped (a
    /// policy that cannot run its rules by name must not let packets through).
    #[inline(always)]
    fn to_split<C: Frame>(ctx: &C) -> bool {
        ctx.split();
        false
    }

    /// The flow cache's verdict for the packet as a BPF call (the stateful body):
    /// the lookup's frame and the stateful path's must not add up. Slot u32::MAX:
    /// no verdict (a plain pair, not an `Option`: the kernel rejects rustc's BTF
    /// for an enum with data in a function's signature).
    #[inline(never)]
    fn cached_call(pkt: &parse::Packet, at: u32, generation: u32) -> (u32, u32) {
        cache::get(pkt, at, generation).unwrap_or((u32::MAX, 0))
    }

    /// The door's answer as a BPF call (the stateful body): what it leaves on
    /// its frame stays there, so the verifier sees two outcomes, not one per
    /// path through it (Linux 6.1 ran out of its budget on the stateful body).
    #[inline(never)]
    fn door_call(h: u32) -> bool {
        door::admits(h)
    }

    /// The full lookup as a BPF call (the stateful body).
    #[inline(never)]
    fn full_call(pkt: &parse::Packet) -> (u32, u32) {
        full::<true>(pkt, 0)
    }

    /// The full lookup (a cache miss). With rules by name (the split body
    /// only), the learned destinations' rules too; a verdict that depends on
    /// them carries [`FLOW_LEARNED`] (cached with a deadline and an epoch).
    #[inline(always)]
    pub(crate) fn full<const SPLIT: bool>(pkt: &parse::Packet, epoch: u32) -> (u32, u32) {
        let dns = SPLIT && dns::on();
        if dns {
            dns::learned(pkt);
        }
        let mut v = classify::lookup::<SPLIT>(pkt, epoch).unwrap_or(classify::NONE);
        let mut learned = 0;
        if dns {
            let (best, dependent) = dns::combine(v);
            v = best;
            learned = if dependent { FLOW_LEARNED } else { 0 };
        }
        if v.rule == classify::NONE.rule {
            return (DEFAULT_COUNTER_SLOT, unsafe { core::ptr::read_volatile(&DEFAULT_ACTION) } | learned);
        }
        (v.rule, v.action | learned)
    }

    /// Whether a packet that could not be parsed passes (only non-IP frames do).
    /// A drop is counted, and with `DEBUG` logged with its reason through
    /// aya-log's ring buffer (AYA_LOGS; the debug programs only).
    #[inline(always)]
    fn on_error<C: Frame, const DEBUG: bool>(ctx: &C, e: ParseError) -> bool {
        let len = ctx.bytes();
        match e {
            ParseError::NonIp => {
                stats::bump(STAT_NON_IP);
                return true;
            }
            ParseError::Truncated => {
                stats::bump(STAT_TRUNCATED);
                if DEBUG {
                    info!(ctx, "dropped a {} byte packet: truncated (a header it needs ends past the end of the packet)", len);
                }
            }
            ParseError::BadHeader => {
                stats::bump(STAT_BAD_HEADER);
                if DEBUG {
                    info!(ctx, "dropped a {} byte packet: bad header (an IP header field that cannot be right)", len);
                }
            }
            ParseError::TooManyHeaders => {
                stats::bump(STAT_TOO_MANY_HDRS);
                if DEBUG {
                    info!(ctx, "dropped a {} byte packet: too many VLAN tags or IPv6 extension headers to walk", len);
                }
            }
        }
        false
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any path that could reach here; there is no unwinding in BPF.
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
