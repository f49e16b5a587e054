//! Loading: create the maps of one rule-set generation, have the compiled rule
//! set written into them (fill.rs), load the programs through the verifier.
//! Also reads the counters of a generation (live or pinned; counters.rs).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray, ProgramArray},
    programs::{CgroupSkb, CgroupSockAddr, ProgramError, SchedClassifier, Xdp},
};
use egress_common::{
    CG_MAX_OWNERS, CGROUP_SKB_SF_PROGRAM_NAME, CGROUP_TRACK_PROGRAM_NAME, GLOBAL_CG_ID, GLOBAL_CG_LEVEL, GLOBAL_SRC_ANY, MAP_CG_OWNERS,
    MAP_DNS_TAIL_CG, cgroup_program,
};
use egress_common::{
    Counter, FLOW_CACHE_ENTRIES, GLOBAL_CONN_BUCKETS, GLOBAL_CONN_ON, GLOBAL_COUNTER_STRIDE, GLOBAL_DEFAULT_ACTION, GLOBAL_EVENT_INTERVAL,
    GLOBAL_EVENT_TOLERANCE, GLOBAL_FLOW_MASK, GLOBAL_GENERATION, GLOBAL_HALF_COUNTERS, GLOBAL_HALF_DIR_V4, GLOBAL_HALF_DIR_V6,
    GLOBAL_HAS_ETH, GLOBAL_HOT, GLOBAL_TO_ICMP, GLOBAL_TO_TCP_CLOSING, GLOBAL_TO_TCP_EST, GLOBAL_TO_UDP, MAP_CONN_STATS, MAP_CONN_V4,
    MAP_CONN_V6, MAP_COUNTERS, MAP_DEBUG_LOG, MAP_DNS_TAIL_TC, MAP_DNS_TAIL_XDP, MAP_DOOR, MAP_EVENT_LIMITS, MAP_EVENT_STATS, MAP_EVENTS,
    MAP_FLOW_V4, MAP_FLOW_V6, MAP_STATS, MAX_FLOW_CACHE_ENTRIES, MIN_MAX_FLOWS, STATS_LEN, TRACK_PROGRAM_NAME, classifier_program,
    conn_buckets,
};

use super::{DataplaneError, EBPF_OBJECT, Result, map_err, prog_err};
use crate::{
    compile::{Compiled, place::Caps},
    hook::Hook,
    rules::{EventsConfig, StateConfig},
};

/// The load-time globals of the classifier (egress-common's `GLOBAL_*`), as
/// the program reads them.
pub(super) struct Globals {
    default_action: u32,
    has_eth: u32,
    generation: u32,
    /// Flow-cache slot mask, u32::MAX = off.
    mask: u32,
    /// The connection table's timeouts, ns.
    to: [u64; 4],
    /// Deny events: ns between a rule's events (0 = off), burst tolerance ns.
    event_interval: u64,
    event_tolerance: u64,
    /// Where half 1 starts in DIR_V4, DIR_V6 and COUNTERS (egress-common's halves.rs).
    halves: [u32; 3],
    /// 1: the program reads EPOCH (hot reloads).
    hot: u32,
    /// COUNTERS' entries per CPU (egress-common's `counter_stride`).
    counter_stride: u32,
    /// Buckets of the connection table (egress-common's `conn_buckets`).
    conn_buckets: u32,
}

impl Globals {
    pub(super) fn new(default_action: u32, has_eth: bool, generation: u32, mask: u32, sc: &StateConfig, ev: &EventsConfig) -> Globals {
        let ns = |s: u64| s.saturating_mul(1_000_000_000);
        let to = [ns(sc.tcp_established), ns(sc.tcp_closing), ns(sc.udp), ns(sc.icmp)];
        let event_interval = if ev.rate == 0 { 0 } else { 1_000_000_000 / u64::from(ev.rate) };
        let event_tolerance = event_interval * u64::from(ev.burst.max(1) - 1);
        Globals {
            default_action,
            has_eth: has_eth as u32,
            generation,
            mask,
            to,
            event_interval,
            event_tolerance,
            halves: [0; 3],
            hot: 0,
            counter_stride: 0,
            conn_buckets: conn_buckets(sc.max_flows),
        }
    }

    /// The halves' sizes of maps loaded with `caps`, read through EPOCH (hot.rs).
    pub(super) fn with_halves(mut self, caps: &Caps) -> Globals {
        self.halves = [caps.dir_v4, caps.dir_v6, caps.counters];
        self.hot = 1;
        self
    }

    /// COUNTERS' entries per CPU in the maps loaded (0 in a program that counts nothing).
    pub(super) fn with_counter_stride(mut self, stride: u32) -> Globals {
        self.counter_stride = stride;
        self
    }

    /// A loader with the globals set (the maps and programs are up to the caller).
    pub(super) fn loader(&self) -> EbpfLoader<'_> {
        let mut loader = EbpfLoader::new();
        loader
            .override_global(GLOBAL_DEFAULT_ACTION, &self.default_action, true)
            .override_global(GLOBAL_HAS_ETH, &self.has_eth, true)
            .override_global(GLOBAL_GENERATION, &self.generation, true)
            .override_global(GLOBAL_FLOW_MASK, &self.mask, true)
            .override_global(GLOBAL_TO_TCP_EST, &self.to[0], true)
            .override_global(GLOBAL_TO_TCP_CLOSING, &self.to[1], true)
            .override_global(GLOBAL_TO_UDP, &self.to[2], true)
            .override_global(GLOBAL_TO_ICMP, &self.to[3], true)
            .override_global(GLOBAL_EVENT_INTERVAL, &self.event_interval, true)
            .override_global(GLOBAL_EVENT_TOLERANCE, &self.event_tolerance, true)
            .override_global(GLOBAL_HALF_DIR_V4, &self.halves[0], true)
            .override_global(GLOBAL_HALF_DIR_V6, &self.halves[1], true)
            .override_global(GLOBAL_HALF_COUNTERS, &self.halves[2], true)
            .override_global(GLOBAL_HOT, &self.hot, true)
            .override_global(GLOBAL_COUNTER_STRIDE, &self.counter_stride, true)
            .override_global(GLOBAL_CONN_BUCKETS, &self.conn_buckets, true)
            // Only cgroup attachments use it (pinned for the host, see cgroup.rs).
            .map_max_entries(MAP_CG_OWNERS, 1);
        loader
    }
}

/// A loaded (not attached) classifier holding one compiled rule set.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// Which classifier entry point the rule set uses (egress-common's
    /// `classifier_program`): the stateful one asks the connection table first.
    stateful: bool,
    /// The debug twin (logs why it drops what it cannot parse).
    debug: bool,
    /// The companion is loaded (stateful mode, or rules by name).
    pub(super) companion: bool,
    /// Entries per half of each rule map (hot.rs writes the other half).
    pub caps: Caps,
    /// The maps have two halves and the program reads EPOCH: a stateless
    /// rule set without rules by name on an interface hook (hot.rs).
    pub hot: bool,
    /// Counter slots of the rule set loaded (rules + 1).
    slots: u32,
}

/// How to load a rule set besides the rules themselves.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Frames start with an Ethernet header (false for tun/WireGuard).
    pub has_eth: bool,
    /// Rule-set generation stamped into flow-cache entries (never 0).
    pub generation: u32,
    /// Flow verdict cache entries per address family; 0 turns the cache off.
    pub flow_cache: u32,
    /// The hook the program is for: the TC classifier (tc-egress, tc-ingress) or
    /// the XDP program is loaded.
    pub hook: Hook,
    /// Stateful mode: its settings and the folder where the connection table is
    /// pinned (reused if there, created and pinned if not); the companion program
    /// is loaded too.
    pub state: Option<(StateConfig, PathBuf)>,
    /// Deny events' rate limit.
    pub events: EventsConfig,
    /// Where the events ring buffer and its counters are pinned (reused if
    /// there, so a reader follows every generation); None: private maps. The
    /// debug log's ring buffer (aya-log's AYA_LOGS) is pinned there too.
    pub events_dir: Option<PathBuf>,
    /// Debug mode: the classifier's `_dbg` twin, which logs through aya-log why
    /// it drops a packet it cannot parse.
    pub debug: bool,
    /// Rules by name: `[dns]`, the hash key and where the learned tables are
    /// pinned (reused if there). The split program and the companion are loaded.
    pub dns: Option<super::dns::DnsLoad>,
    /// A cgroup attachment (hook [`Hook::Cgroup`]): the cgroup's id and level,
    /// and whether no rule names a source. The cgroup programs are loaded, with
    /// the host's CG_OWNERS map.
    pub cgroup: Option<(u64, u32, bool)>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            has_eth: true,
            generation: 1,
            flow_cache: FLOW_CACHE_ENTRIES,
            hook: Hook::TcEgress,
            state: None,
            events: EventsConfig::default(),
            events_dir: None,
            debug: false,
            dns: None,
            cgroup: None,
        }
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
        let has_eth = o.has_eth;
        let generation = o.generation.max(1);
        let slots = flow_cache_slots(o.flow_cache);
        // An array needs at least one slot even when the cache is off.
        let cache_entries = slots.max(1);
        let mask: u32 = if slots == 0 { u32::MAX } else { slots - 1 };
        // The split body: stateful mode, or rules by name in debug mode. A
        // stateless rule set by name attaches the call-free body, which hands
        // DNS queries and cache misses on to the split one (`tail`).
        let debug = o.debug;
        let stateful = o.state.is_some() || (o.dns.is_some() && debug);
        let tail = o.dns.is_some() && !stateful;
        let companion = o.state.is_some() || o.dns.is_some();
        let conn_on = o.state.is_some() as u32;
        let sc = o.state.as_ref().map(|(c, _)| *c).unwrap_or_default();
        // Every rule map of a rule set that hot reloads can serve holds two
        // halves (egress-common's halves.rs); the rule set goes into half 0,
        // where indexes need no rewrite. Others have half 0 only.
        let caps = Caps::for_compiled(c);
        let hot = o.state.is_none() && o.dns.is_none() && o.cgroup.is_none();
        let halves: u32 = if hot { 2 } else { 1 };
        let globals = Globals::new(c.default_action, has_eth, generation, mask, &sc, &o.events);
        let globals = if hot { globals.with_halves(&caps) } else { globals };
        let (stride, counter_entries) = super::counters::layout(halves * caps.counters)?;
        let globals = globals.with_counter_stride(stride);
        let mut loader = globals.loader();
        loader.override_global(GLOBAL_CONN_ON, &conn_on, true);
        let dns_globals = super::dns::DnsGlobals::new(o.dns.as_ref());
        let dns_paths = super::dns::pin_paths(o.dns.as_ref())?;
        let patterns = c.fqdn.len().saturating_sub(1) as u32;
        super::dns::configure(&mut loader, o.dns.as_ref(), &dns_globals, &dns_paths, patterns);
        loader.map_max_entries(MAP_EVENT_LIMITS, caps.counters);
        let owners = super::cgroup::owners_path();
        let cg = o.cgroup.map(|(id, level, src_any)| (id, level, src_any as u32));
        if let Some((id, level, src_any)) = &cg {
            super::state::private_dir(owners.parent().unwrap_or(Path::new("/")))?;
            loader
                .override_global(GLOBAL_CG_ID, id, true)
                .override_global(GLOBAL_CG_LEVEL, level, true)
                .override_global(GLOBAL_SRC_ANY, src_any, true)
                .map_max_entries(MAP_CG_OWNERS, CG_MAX_OWNERS)
                .map_pin_path(MAP_CG_OWNERS, owners.as_path());
        }
        let (pev, pes, plog);
        if let Some(dir) = &o.events_dir {
            super::state::private_dir(dir)?;
            (pev, pes, plog) = (dir.join(MAP_EVENTS), dir.join(MAP_EVENT_STATS), dir.join(MAP_DEBUG_LOG));
            loader
                .map_pin_path(MAP_EVENTS, pev.as_path())
                .map_pin_path(MAP_EVENT_STATS, pes.as_path())
                .map_pin_path(MAP_DEBUG_LOG, plog.as_path());
        }
        // Arrays are preallocated: one or two halves of the rule set's size with room to grow.
        for (name, cap) in caps.rule_maps() {
            loader.map_max_entries(name, halves * cap);
        }
        loader
            .map_max_entries(MAP_COUNTERS, counter_entries)
            .map_max_entries(MAP_FLOW_V4, cache_entries)
            .map_max_entries(MAP_FLOW_V6, cache_entries);
        if slots != 0 {
            // The flow cache's door: one entry per CPU (the program's door.rs).
            loader.map_max_entries(MAP_DOOR, super::counters::possible_cpus()? as u32);
        }
        let table;
        let (p4, p6, pstats);
        match &o.state {
            Some((sc, dir)) => {
                table = super::conn::conn_table_dir(dir, sc.max_flows);
                super::state::private_dir(&table)?;
                (p4, p6, pstats) = (table.join(MAP_CONN_V4), table.join(MAP_CONN_V6), dir.join(MAP_CONN_STATS));
                loader
                    .map_max_entries(MAP_CONN_V4, conn_buckets(sc.max_flows))
                    .map_max_entries(MAP_CONN_V6, conn_buckets(sc.max_flows))
                    .map_pin_path(MAP_CONN_V4, p4.as_path())
                    .map_pin_path(MAP_CONN_V6, p6.as_path())
                    .map_pin_path(MAP_CONN_STATS, pstats.as_path());
            }
            // Stateless: a token table (the program never touches it).
            None => {
                loader.map_max_entries(MAP_CONN_V4, conn_buckets(MIN_MAX_FLOWS)).map_max_entries(MAP_CONN_V6, conn_buckets(MIN_MAX_FLOWS));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|source| match source {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) => {
                DataplaneError::MapMemory { op: format!("create map {name}"), error: io_error }
            }
            source => DataplaneError::Ebpf { op: "load the eBPF object (create maps)".into(), source: Box::new(source) },
        })?;
        super::fill::fill(&mut ebpf, c)?;
        if let Some(d) = &o.dns {
            super::dns::fill(&mut ebpf, &c.fqdn, d)?;
        }
        let xdp_hook = o.hook == Hook::Xdp;
        let loaded = match (cg.is_some(), xdp_hook) {
            (true, _) => load_cgroup(&mut ebpf, stateful, debug, companion, tail),
            (false, false) => classifier(&mut ebpf, stateful, debug)?.load(),
            (false, true) => xdp(&mut ebpf, stateful, debug)?.load(),
        };
        let cgroup = cg.is_some();
        let loaded = loaded.and_then(|()| if tail && !cgroup { load_split(&mut ebpf, xdp_hook) } else { Ok(()) });
        let loaded = loaded.and_then(|()| if companion && !cgroup { track(&mut ebpf)?.load() } else { Ok(()) });
        if let Err(e) = loaded {
            return Err(match e {
                ProgramError::LoadError { io_error, verifier_log } => {
                    let log = verifier_log.to_string();
                    if let Ok(path) = std::env::var("EGRESS_VERIFIER_LOG") {
                        let _ = std::fs::write(path, &log);
                    }
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                    DataplaneError::Verifier { source: io_error, log: tail }
                }
                other => DataplaneError::Program { op: "load the classifier".into(), source: other },
            });
        }
        Ok(Loaded { ebpf, stateful, debug, companion, caps, hot, slots: c.counter_slots })
    }

    /// The TC classifier (loaded when the hook is tc-egress or tc-ingress).
    pub fn program(&mut self) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, self.stateful, self.debug)
    }

    /// A cgroup attachment's packet hook (cgroup_skb egress).
    pub(super) fn cgroup_program(&self) -> &'static str {
        cgroup_program(self.stateful, self.debug)
    }

    /// Stateful mode's companion program (loaded when the rule set is stateful).
    pub fn track_program(&mut self) -> Result<&mut SchedClassifier> {
        track(&mut self.ebpf).map_err(prog_err("the companion program"))
    }

    /// The XDP program (loaded when the hook is xdp).
    pub fn xdp_program(&mut self) -> Result<&mut Xdp> {
        xdp(&mut self.ebpf, self.stateful, self.debug)
    }

    /// Summed counters of the rule set loaded (index 0 = default policy; half 0).
    pub fn counters(&self) -> Result<Vec<Counter>> {
        let mut all = super::counters::sum(map_of(&self.ebpf, MAP_COUNTERS)?)?;
        all.truncate(self.slots as usize);
        Ok(all)
    }

    pub fn stats(&self) -> Result<Vec<u64>> {
        stats_of(map_of(&self.ebpf, MAP_STATS)?)
    }
}

fn classifier(ebpf: &mut Ebpf, stateful: bool, debug: bool) -> Result<&mut SchedClassifier> {
    let name = classifier_program(false, stateful, debug);
    let prog = ebpf.program_mut(name).ok_or_else(|| DataplaneError::Other(format!("program {name} missing from the eBPF object")))?;
    prog.try_into().map_err(prog_err("program is not a TC classifier"))
}

/// Loads a cgroup attachment's programs: the packet hook (for the mode and
/// debug mode), the ingress companion, the split body the packet hook hands on
/// to (`tail`: a stateless rule set by name) and the four socket calls.
fn load_cgroup(ebpf: &mut Ebpf, split: bool, debug: bool, companion: bool, tail: bool) -> std::result::Result<(), ProgramError> {
    let mut skb = vec![cgroup_program(split, debug)];
    if companion {
        skb.push(CGROUP_TRACK_PROGRAM_NAME);
    }
    for name in skb {
        let p: &mut CgroupSkb = ebpf.program_mut(name).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
        p.load()?;
    }
    if tail {
        let p: &mut CgroupSkb = ebpf.program_mut(CGROUP_SKB_SF_PROGRAM_NAME).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
        p.load()?;
        let fd = p.fd()?.try_clone()?;
        let map = ebpf.map_mut(MAP_DNS_TAIL_CG).ok_or(ProgramError::UnexpectedProgramType)?;
        ProgramArray::try_from(map)?.set(0, &fd, 0)?;
    }
    for (name, _) in super::cgroup::CALLS {
        let p: &mut CgroupSockAddr = ebpf.program_mut(name).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
        p.load()?;
    }
    Ok(())
}

/// Loads the split program a stateless rule set by name hands packets on to,
/// and puts it in the program array the entry point tail-calls through.
fn load_split(ebpf: &mut Ebpf, xdp_hook: bool) -> std::result::Result<(), ProgramError> {
    let name = classifier_program(xdp_hook, true, false);
    let prog = ebpf.program_mut(name).ok_or(ProgramError::UnexpectedProgramType)?;
    let fd = if xdp_hook {
        let p: &mut Xdp = prog.try_into()?;
        p.load()?;
        p.fd()?.try_clone()?
    } else {
        let p: &mut SchedClassifier = prog.try_into()?;
        p.load()?;
        p.fd()?.try_clone()?
    };
    let map_name = if xdp_hook { MAP_DNS_TAIL_XDP } else { MAP_DNS_TAIL_TC };
    let map = ebpf.map_mut(map_name).ok_or(ProgramError::UnexpectedProgramType)?;
    let mut arr = ProgramArray::try_from(map)?;
    Ok(arr.set(0, &fd, 0)?)
}

fn track(ebpf: &mut Ebpf) -> std::result::Result<&mut SchedClassifier, ProgramError> {
    match ebpf.program_mut(TRACK_PROGRAM_NAME) {
        Some(p) => p.try_into(),
        None => Err(ProgramError::UnexpectedProgramType),
    }
}

fn xdp(ebpf: &mut Ebpf, stateful: bool, debug: bool) -> Result<&mut Xdp> {
    let name = classifier_program(true, stateful, debug);
    let prog = ebpf.program_mut(name).ok_or_else(|| DataplaneError::Other(format!("program {name} missing from the eBPF object")))?;
    prog.try_into().map_err(prog_err("program is not an XDP program"))
}

/// A map of `Loaded`'s object.
fn map_of<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map> {
    ebpf.map(name).ok_or_else(|| DataplaneError::Other(format!("no map {name}")))
}

/// A per-CPU u64 array (STATS and the like) summed over CPUs.
pub(super) fn sum_stats<T: std::borrow::Borrow<MapData>>(arr: &PerCpuArray<T, u64>) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(STATS_LEN as usize);
    for i in 0..arr.len() {
        let per_cpu = arr.get(&i, 0).map_err(map_err("read STATS"))?;
        out.push(per_cpu.iter().sum());
    }
    Ok(out)
}

/// STATS summed over CPUs.
fn stats_of(map: &Map) -> Result<Vec<u64>> {
    sum_stats(&PerCpuArray::<&MapData, u64>::try_from(map).map_err(map_err("open STATS"))?)
}

/// Counters (summed over CPUs) and STATS of a generation whose maps are pinned in `gdir`.
pub(super) fn read_pinned(gdir: &Path) -> Result<(Vec<Counter>, Vec<u64>)> {
    let open = |name: &str| -> Result<MapData> {
        let p = gdir.join(name);
        MapData::from_pin(&p).map_err(map_err(format!("open pinned map {}", p.display())))
    };
    let counters = super::counters::sum(&super::counters::as_map(open(MAP_COUNTERS)?)?)?;
    let stats = stats_of(&Map::PerCpuArray(open(MAP_STATS)?))?;
    Ok((counters, stats))
}
