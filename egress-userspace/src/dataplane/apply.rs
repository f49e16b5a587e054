//! One atomic replacement of an attachment's rule set, with counters that
//! survive it, and what removes attachments.
//!
//! Counters across a replacement: each generation has its own maps, so the new
//! program starts with zeroed counters while packets already inside the old
//! program (on other CPUs) still count into the old maps. The new state file
//! records, for every row carried over (same name, match and action; the default
//! row when the default policy is unchanged), its base (everything earlier
//! generations counted) and which old slot still has to be added (`pending`).
//! Readers add the old maps' live values while `pending` is set. After the swap
//! we wait for an RCU grace period (no CPU can still run the old program), read
//! the old counters, now final, fold them into the bases, clear `pending` and
//! remove the old pins. Every packet is counted exactly once at every moment, and
//! a replacement interrupted at any point leaves state a reader still sums right
//! (readout.rs sums them).

use std::{collections::HashMap, fs};

use aya::Ebpf;
use egress_common::{ALL_MAPS, Counter};

use super::{
    DataplaneError, Result,
    conn::{conn_table_dir, copy_conn, live_table_dir},
    env::{Target, ensure_bpffs, has_ethernet},
    io_err,
    link::{self, LinkHealth},
    load::{LoadOptions, Loaded, flow_cache_slots, read_pinned},
    pin_err,
    readout::{count, health_of, statuses},
    state::{self, Count, Pending, RuleInfo, State, companion_pin, conn_dir, dns_dir, events_dir, gen_dir, link_pin, now_unix, pin_dir},
};
use crate::{compile::Compiled, hook::Hook, rules::StateConfig};

/// What a replacement needs besides the compiled maps.
pub struct ApplyRequest<'a> {
    pub target: &'a Target,
    pub compiled: &'a Compiled,
    /// Flow verdict cache entries per family (0: off).
    pub flow_cache: u32,
    pub rules_file: String,
    pub digest: String,
    pub default_action: String,
    /// The default policy is a deny in audit mode (counted, the packet passes).
    pub default_audit: bool,
    /// The rules in file order (their `base` and `since` are filled in
    /// here). Made when needed: a hot reload makes them after the flip (at
    /// 100k rules, their summaries take tens of milliseconds).
    pub rules: Box<dyn FnOnce() -> Vec<RuleInfo> + 'a>,
    /// Stateful mode's settings (None: stateless).
    pub state: Option<StateConfig>,
    /// Deny events' rate limit.
    pub events: crate::rules::EventsConfig,
    /// Debug mode: the classifier that logs why it drops what it cannot parse.
    pub debug: bool,
    /// `[dns]` (used when the rule set names domains).
    pub dns: Option<crate::rules::DnsConfig>,
    /// No rule names a source (a cgroup's socket calls can then be decided
    /// before their source address is chosen).
    pub src_any: bool,
}

/// A rule that the replacement removed (or changed under its name), with its final counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    pub action: String,
    pub summary: String,
    pub count: Count,
    pub since: u64,
}

/// How an apply got its rule set into the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadPath {
    /// Nothing was there: a first load.
    Load,
    /// The loaded program kept, the rule set written into its idle half
    /// (hot.rs); `enforced`: from the start of the writes to the flip;
    /// `written`: the map entries written (those that differed).
    Hot { enforced: std::time::Duration, written: u64 },
    /// A new program and maps, swapped in; why not a hot reload.
    Full(String),
}

impl ReloadPath {
    /// "hot", "full" or "load", as logs and --json say it.
    pub fn name(&self) -> &'static str {
        match self {
            ReloadPath::Load => "load",
            ReloadPath::Hot { .. } => "hot",
            ReloadPath::Full(_) => "full",
        }
    }
}

/// Outcome of an apply.
pub struct Applied {
    pub state: State,
    /// A rule set was there before and has been replaced.
    pub replaced: bool,
    /// Which way it went in.
    pub path: ReloadPath,
    /// Rules (not counting the default row) that kept their counters.
    pub kept: usize,
    pub removed: Vec<Removed>,
    /// When the new rule set took over (the EPOCH flip, or the program
    /// attached or swapped); the state file and the counter fold come after.
    pub enforced_at: std::time::Instant,
}

pub(super) fn no_state(t: &Target) -> DataplaneError {
    DataplaneError::Other(format!(
        "no rules loaded on {} ({}) in network namespace {} (nothing pinned under {}); run `egress apply --iface {}{} --rules FILE`",
        t.iface,
        t.hook,
        t.netns,
        pin_dir(&t.key()).display(),
        t.iface,
        if t.hook == Hook::TcEgress { String::new() } else { format!(" --hook {}", t.hook) }
    ))
}

/// Loads the rule set and attaches it to the target's hook, or replaces
/// the rule set already there in one atomic step. Any failure before that step
/// leaves the old rule set enforced and its state untouched; a first apply
/// that fails leaves nothing behind.
pub fn apply(req: ApplyRequest<'_>) -> Result<Applied> {
    ensure_bpffs()?;
    let dir = pin_dir(&req.target.key());
    let fresh = !dir.exists();
    let r = apply_at(req);
    if r.is_err() && fresh {
        let _ = fs::remove_dir_all(&dir);
    }
    r
}

fn apply_at(req: ApplyRequest<'_>) -> Result<Applied> {
    let t = req.target;
    let key = t.key();
    let cgroup = t.hook == Hook::Cgroup;
    let _lock = state::attachment_lock(&key)?;
    let mut prev = state::read_state_for_update(&key)?;
    if let Some(p) = prev.as_mut() {
        // An earlier replacement stopped before folding its counts: finish it.
        fold_pending(p)?;
    }
    let lpath = link_pin(&key);
    // The main link (a lost companion is re-attached below, without starting afresh).
    let main_health = |p: &State| if p.is_cgroup() { health_of(p) } else { link::health(&lpath, p.ifindex, false) };
    if let Some(p) = &prev
        && p.nl_priority.is_none()
        && main_health(p) != LinkHealth::Attached
    {
        tracing::info!(iface = t.iface, key, "the previous link is severed or gone; attaching afresh");
        if cgroup {
            let _ = super::cgroup::unlink_all(&key, p.cgroup_id);
        }
        let _ = link::unlink(&t.iface, &lpath, None, false);
        let _ = fs::remove_dir_all(pin_dir(&key));
        prev = None;
    }

    // The program stays when only the rules changed (hot.rs).
    let refused = match &prev {
        None => Some(ReloadPath::Load),
        Some(p) => super::hot::refusal(p, &req).map(ReloadPath::Full),
    };
    let path = match (refused, prev.take()) {
        (None, Some(p)) => return super::hot::reload(p, req),
        (path, p) => {
            prev = p;
            path.unwrap_or(ReloadPath::Load)
        }
    };
    let now = now_unix();
    let generation = prev.as_ref().map(|p| p.generation + 1).unwrap_or(1);
    let mut rules = (req.rules)();
    let Carry { slots, carried, default: (default_base, default_since, default_reset) } =
        carry(prev.as_ref(), &mut rules, &req.default_action, now);

    // Rules by name: the attachment's hash key outlives its generations.
    let dns = match &req.dns {
        Some(config) if !req.compiled.fqdn.is_empty() => {
            let hk = match prev.as_ref().and_then(|p| p.dns_key) {
                Some(k) => k,
                None => super::dns::new_key()?,
            };
            Some(super::dns::DnsLoad { config: config.clone(), key: hk, dir: dns_dir(&key) })
        }
        _ => None,
    };
    let opts = LoadOptions {
        has_eth: !cgroup && has_ethernet(&t.iface)?,
        // Wraps after 4 billion applies; 0 is skipped because the program reserves it.
        generation: (generation % u64::from(u32::MAX)) as u32 + 1,
        flow_cache: req.flow_cache,
        hook: t.hook,
        state: req.state.map(|c| (c, conn_dir(&key))),
        events: req.events,
        events_dir: Some(events_dir(&key)),
        debug: req.debug,
        dns: dns.clone(),
        cgroup: cgroup.then_some((t.cgroup_id, t.cgroup_level, req.src_any)),
    };
    // A resized connection table is a new table, and so is the bucketed table
    // after a release's LRU one: carry the live connections over. (Which table
    // is live is read before the load pins the new one.)
    let prev_table = prev.as_ref().and_then(|p| p.stateful).map(|c| live_table_dir(&conn_dir(&key), c.max_flows));
    let mut loaded = Loaded::with_options(req.compiled, &opts)?;
    let new_table = req.state.map(|c| conn_table_dir(&conn_dir(&key), c.max_flows));
    if let (Some(old), Some(new)) = (&prev_table, &new_table)
        && old != new
    {
        let n = copy_conn(old, &mut loaded.ebpf)?;
        tracing::info!(key, connections = n, "connection table resized; live connections carried over");
    }
    let gdir = gen_dir(&key, generation);
    // Pin the new maps before the switch so that readers can follow at once.
    let pin_maps = |ebpf: &Ebpf| -> Result<()> {
        state::private_dir(&gdir)?;
        let dns_maps: &[&str] = if dns.is_some() { &egress_common::DNS_GEN_MAPS } else { &[] };
        for &name in ALL_MAPS.iter().chain(dns_maps) {
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
    let replaced = lpath.exists() || prev.as_ref().is_some_and(|p| p.nl_priority.is_some());
    let prev_nl = prev.as_ref().and_then(|p| Some((p.nl_priority?, p.nl_handle?)));
    // Stateful: the companion watches the other direction; attached (or updated)
    // before the classifier relies on it.
    let comp_path = companion_pin(&key);
    let comp_ingress = t.hook == Hook::TcEgress;
    let prev_comp_nl = prev.as_ref().and_then(|p| p.companion_nl);
    // A cgroup's companion is one of its links (cgroup.rs), not a TC program.
    let needs_companion = !cgroup && (req.state.is_some() || dns.is_some());
    if needs_companion && comp_path.exists() && link::health(&comp_path, t.ifindex, false) != LinkHealth::Attached {
        // The companion's link lost its interface or was detached: attach afresh.
        let _ = fs::remove_file(&comp_path);
    }
    let comp_fresh = !comp_path.exists() && prev_comp_nl.is_none();
    let companion = match needs_companion {
        true => match loaded.track_program().and_then(|prog| link::switch_tc(prog, &t.iface, comp_ingress, &comp_path, prev_comp_nl)) {
            Ok(a) => Some(a),
            Err(e) => {
                let _ = fs::remove_dir_all(&gdir);
                return Err(e);
            }
        },
        false => None,
    };
    let companion_nl = companion.as_ref().and_then(|a| Some((a.nl_priority?, a.nl_handle?)));
    let companion_name = match companion.as_ref() {
        Some(a) => Some(format!("{} ({})", if comp_ingress { Hook::TcIngress } else { Hook::TcEgress }, a.mode)),
        None if cgroup && (req.state.is_some() || dns.is_some()) => Some("cgroup_skb ingress".to_string()),
        None => None,
    };
    let prev_mode = prev.as_ref().map(|p| p.mode.clone());
    let switched = match t.hook {
        Hook::TcEgress | Hook::TcIngress => {
            loaded.program().and_then(|prog| link::switch_tc(prog, &t.iface, t.hook == Hook::TcIngress, &lpath, prev_nl))
        }
        Hook::Xdp => loaded.xdp_program().and_then(|prog| link::switch_xdp(prog, &t.iface, t.ifindex, &lpath, prev_mode.as_deref())),
        Hook::Cgroup => super::cgroup::switch(&mut loaded, t, &key),
    };
    let attachment = match switched {
        Ok(a) => a,
        Err(e) => {
            let _ = fs::remove_dir_all(&gdir);
            if companion.is_some() && comp_fresh {
                let _ = link::unlink(&t.iface, &comp_path, companion_nl, comp_ingress);
            }
            return Err(e);
        }
    };
    let enforced_at = std::time::Instant::now();
    let halves =
        loaded.hot.then_some(state::Halves { caps: loaded.caps, epoch: 0, events: req.events, object: super::object_digest().to_string() });
    drop(loaded);
    if !cgroup && !needs_companion && (comp_path.exists() || prev_comp_nl.is_some()) {
        // Neither stateful nor naming domains: the companion goes.
        let _ = link::unlink(&t.iface, &comp_path, prev_comp_nl, comp_ingress);
    }
    if req.state.is_none() {
        let _ = fs::remove_dir_all(conn_dir(&key));
    } else if let (Some(old), Some(new)) = (&prev_table, &new_table)
        && old != new
    {
        let _ = fs::remove_dir_all(old);
    }

    let patterns: Vec<state::PatternInfo> = req
        .compiled
        .fqdn
        .iter()
        .filter(|f| !f.pattern.is_empty() && dns.is_some())
        .map(|f| state::PatternInfo {
            pattern: f.pattern.clone(),
            rule: rules.get((f.first_rule as usize).saturating_sub(1)).map(|r| r.name.clone()).unwrap_or_default(),
        })
        .collect();
    let mut st = State {
        key: key.clone(),
        iface: t.iface.clone(),
        ifindex: t.ifindex,
        netns_cookie: t.netns_cookie,
        netns: t.netns.clone(),
        hook: t.hook,
        mode: attachment.mode,
        rules_file: req.rules_file,
        digest: req.digest,
        loaded_at: now,
        generation,
        default_action: req.default_action,
        default_audit: req.default_audit,
        rules,
        default_base,
        default_since,
        default_reset,
        stats_base: prev.as_ref().map(|p| p.stats_base.clone()).unwrap_or_default(),
        flow_cache: flow_cache_slots(req.flow_cache),
        pending: prev.as_ref().map(|p| Pending { generation: p.maps_generation(), slots, counter_base: p.counter_base() }),
        nl_priority: attachment.nl_priority,
        nl_handle: attachment.nl_handle,
        stateful: req.state,
        companion: companion_name,
        companion_nl,
        debug: req.debug,
        dns: dns.as_ref().map(|d| d.config.clone()),
        dns_key: dns.as_ref().map(|d| d.key),
        patterns,
        cgroup_id: t.cgroup_id,
        cgroup_level: t.cgroup_level,
        halves,
        maps: None,
    };
    settle_dns(&key, prev.as_ref(), &st);
    state::write_state(&st)?;
    let old_final = fold_pending(&mut st)?;
    let removed = prev.map(|p| removed(p.counter_base(), p.rules, &carried, old_final.as_ref())).unwrap_or_default();
    let kept = carried.iter().filter(|c| **c).count();
    Ok(Applied { state: st, replaced, kept, removed, path, enforced_at })
}

/// How the counts of a previous rule set carry over to the next.
pub(super) struct Carry {
    /// (new counter slot, old counter slot) of every row carried over.
    pub slots: Vec<(u32, u32)>,
    /// Per previous rule: carried over.
    pub carried: Vec<bool>,
    /// The default row's base, since and reset snapshot.
    pub default: (Count, u64, Count),
}

/// Gives each rule the base, start and reset of the previous rule it is (same
/// name, match and action), or a fresh start; the default row keeps its counts
/// while the default policy stays.
pub(super) fn carry(prev: Option<&State>, rules: &mut [RuleInfo], default_action: &str, now: u64) -> Carry {
    let mut c = Carry {
        slots: Vec::new(),
        carried: prev.map(|p| vec![false; p.rules.len()]).unwrap_or_default(),
        default: (Count::default(), now, Count::default()),
    };
    let by_name: HashMap<&str, usize> =
        prev.map(|p| p.rules.iter().enumerate().map(|(j, r)| (r.name.as_str(), j)).collect()).unwrap_or_default();
    for (i, r) in rules.iter_mut().enumerate() {
        match (prev, by_name.get(r.name.as_str())) {
            (Some(p), Some(&j)) if p.rules[j].same_rule(r) => {
                r.base = p.rules[j].base;
                r.since = p.rules[j].since;
                r.reset = p.rules[j].reset;
                c.slots.push((i as u32 + 1, j as u32 + 1));
                c.carried[j] = true;
            }
            _ => {
                r.base = Count::default();
                r.since = now;
                r.reset = Count::default();
            }
        }
    }
    if let Some(p) = prev
        && p.default_action == default_action
    {
        c.default = (p.default_base, p.default_since, p.default_reset);
        c.slots.push((0, 0));
    }
    c
}

/// The previous rules (`rules`, counted from slot `base` in COUNTERS) that
/// were not carried over, with their final counts (`old_final`: the previous
/// counters after the fold).
pub(super) fn removed(base: u32, rules: Vec<RuleInfo>, carried: &[bool], old_final: Option<&(Vec<Counter>, Vec<u64>)>) -> Vec<Removed> {
    let base = base as usize;
    let mut out = Vec::new();
    for (j, r) in rules.into_iter().enumerate() {
        if carried[j] {
            continue;
        }
        let last = old_final.and_then(|(c, _)| c.get(base + j + 1)).map(count).unwrap_or_default();
        out.push(Removed {
            name: r.name,
            action: r.action,
            summary: r.summary,
            count: (r.base + last).since_reset(r.reset),
            since: r.since,
        });
    }
    out
}

/// After a swap: what a removed pattern taught goes (and everything when no
/// rule names a domain any more); tables of an old size go.
fn settle_dns(key: &str, prev: Option<&State>, st: &State) {
    let dir = dns_dir(key);
    let Some(config) = &st.dns else {
        let _ = fs::remove_dir_all(&dir);
        return;
    };
    let b = super::dns::buckets(config.max_addresses);
    if let Some(old) = prev.and_then(|p| p.dns.as_ref()).map(|c| super::dns::buckets(c.max_addresses))
        && old != b
    {
        super::dns::remove_table(&dir, old);
    }
    let keep: std::collections::HashSet<u64> = st.patterns.iter().map(|p| crate::rules::pattern_id(&p.pattern)).collect();
    match super::dns::sweep(&super::dns::table_dir(&dir, b), &keep) {
        Ok(0) => {}
        Ok(n) => tracing::info!(key, addresses = n, "learned addresses of removed patterns dropped"),
        Err(e) => tracing::warn!(key, error = %e, "could not drop the learned addresses of removed patterns"),
    }
}

/// Finishes a replacement: waits until no CPU runs the previous program, adds its
/// final counts to the bases, clears `pending`, removes its pins. Returns the
/// previous generation's final counters and STATS (None when nothing was pending).
pub(super) fn fold_pending(st: &mut State) -> Result<Option<(Vec<Counter>, Vec<u64>)>> {
    let Some(p) = st.pending.clone() else {
        return Ok(None);
    };
    link::wait_for_running_programs()?;
    // A hot reload's old half: same maps, whose STATS stay live.
    let hot = p.generation == st.maps_generation();
    let gdir = gen_dir(&st.key, p.generation);
    let old = match read_pinned(&gdir) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = st.key, generation = p.generation, "counts of the previous generation could not be read: {e}");
            None
        }
    };
    if let Some((c, s)) = &old {
        for &(new, old_slot) in &p.slots {
            let add = c.get((p.counter_base + old_slot) as usize).map(count).unwrap_or_default();
            if new == 0 {
                st.default_base = st.default_base + add;
            } else if let Some(r) = st.rules.get_mut(new as usize - 1) {
                r.base = r.base + add;
            }
        }
        if !hot {
            if st.stats_base.len() < s.len() {
                st.stats_base.resize(s.len(), 0);
            }
            for (b, v) in st.stats_base.iter_mut().zip(s) {
                *b += v;
            }
        }
    }
    st.pending = None;
    state::write_state(st)?;
    if !hot {
        let _ = fs::remove_dir_all(&gdir);
    }
    Ok(old)
}

/// Removes the program from the interface and deletes its pins and state.
/// Returns false when nothing was loaded there.
pub fn detach(t: &Target) -> Result<bool> {
    ensure_bpffs()?;
    remove_attachment(&t.key(), &t.iface, t.hook)
}

fn remove_attachment(key: &str, iface: &str, hook: Hook) -> Result<bool> {
    let _lock = state::attachment_lock(key)?;
    let st = state::read_state(key)?;
    let nl = st.as_ref().and_then(|s| Some((s.nl_priority?, s.nl_handle?)));
    let mut found = false;
    if hook == Hook::Cgroup {
        found |= super::cgroup::unlink_all(key, st.as_ref().map(|s| s.cgroup_id).unwrap_or(0))?;
    }
    found |= link::unlink(iface, &link_pin(key), nl, hook == Hook::TcIngress)?;
    if let Some(comp_nl) = st.as_ref().and_then(|s| s.companion_nl) {
        // A clsact companion (a tcx one goes with the pins below).
        found |= link::unlink(iface, &companion_pin(key), Some(comp_nl), hook == Hook::TcEgress)?;
    }
    let dir = pin_dir(key);
    if dir.exists() {
        found = true;
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    found |= state::remove_state(key)?;
    Ok(found)
}

/// Removes every attachment whose link no longer reaches its interface (the
/// interface or its whole namespace was deleted): pins and state. Returns them.
pub fn prune() -> Result<Vec<State>> {
    let mut out = Vec::new();
    for (s, h) in statuses()? {
        if h == LinkHealth::Attached {
            continue;
        }
        // Look again under the lock: an apply may be attaching afresh right now.
        let _lock = state::attachment_lock(&s.key)?;
        let h = health_of(&s);
        drop(_lock);
        if h != LinkHealth::Attached && remove_attachment(&s.key, &s.iface, s.hook)? {
            out.push(s);
        }
    }
    Ok(out)
}
