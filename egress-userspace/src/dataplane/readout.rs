//! What reads an attachment: its counters as they stand (bases, live maps, a
//! pending previous generation, reset snapshots), `--reset`, link health and
//! status. The arithmetic of a replacement is described in apply.rs.

use egress_common::Counter;

use super::{
    DataplaneError, Result,
    apply::no_state,
    conn::{ConnReadout, live_table_dir, read_conn},
    env::{Target, ensure_bpffs},
    link::{self, LinkHealth},
    load::read_pinned,
    state::{self, Count, State, companion_pin, conn_dir, gen_dir, link_pin, now_unix},
};

pub(super) fn count(c: &Counter) -> Count {
    Count { packets: c.packets, bytes: c.bytes, last_hit: mono_to_unix(c.last) }
}

/// Unix seconds of a CLOCK_MONOTONIC_COARSE time in ns (what the program
/// stamps); 0 stays 0 (never).
fn mono_to_unix(ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    (super::events::mono_ns_to_unix_ns(ns) / 1_000_000_000) as u64
}

/// Counters of an attachment, as they stand: bases plus live counts.
pub struct Readout {
    pub state: State,
    /// Index 0 = default policy, i = rule i (file order).
    pub counters: Vec<Count>,
    pub stats: Vec<u64>,
    pub health: LinkHealth,
    /// Stateful mode: the connection table and its counters.
    pub conn: Option<ConnReadout>,
    /// Deny events: sent, suppressed by the rate limit, lost (`ES_*` slots).
    pub events: Vec<u64>,
    /// Rules by name: what was learned and the DNS counters.
    pub dns: Option<super::dns::DnsReadout>,
}

/// `egress dns`: what an attachment learned from DNS answers.
pub fn read_dns(t: &Target) -> Result<(State, super::dns::DnsReadout)> {
    ensure_bpffs()?;
    let st = state::read_state(&t.key())?.ok_or_else(|| no_state(t))?;
    let Some(c) = &st.dns else {
        return Err(DataplaneError::Other(format!(
            "the rules on {} ({}) name no domain (no dst_fqdn): nothing is learned from DNS there",
            t.iface, t.hook
        )));
    };
    let r = super::dns::read(&super::state::dns_dir(&st.key), super::dns::buckets(c.max_addresses))?;
    Ok((st, r))
}

pub fn read_counters(t: &Target) -> Result<Readout> {
    ensure_bpffs()?;
    let key = t.key();
    // A replacement may fold and remove the previous generation between our reads
    // of the state and of its maps; the state written before the removal is then
    // complete, so read again.
    let mut last_err = None;
    for _ in 0..5 {
        let st = state::read_state(&key)?.ok_or_else(|| no_state(t))?;
        match readout(st) {
            Ok(r) => return Ok(r),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| no_state(t)))
}

fn readout(st: State) -> Result<Readout> {
    let mut r = raw_readout(st)?;
    // Shown counts start at the last reset.
    let resets = std::iter::once(r.state.default_reset).chain(r.state.rules.iter().map(|ri| ri.reset));
    for (c, z) in r.counters.iter_mut().zip(resets) {
        *c = c.since_reset(z);
    }
    Ok(r)
}

/// Counters without the reset snapshots subtracted.
fn raw_readout(st: State) -> Result<Readout> {
    let (live, stats) = read_pinned(&gen_dir(&st.key, st.maps_generation()))?;
    let base = st.counter_base() as usize;
    let mut counters: Vec<Count> = Vec::with_capacity(st.rules.len() + 1);
    counters.push(st.default_base + live.get(base).map(count).unwrap_or_default());
    for (i, r) in st.rules.iter().enumerate() {
        counters.push(r.base + live.get(base + i + 1).map(count).unwrap_or_default());
    }
    let mut stats: Vec<u64> = stats.iter().enumerate().map(|(i, v)| v + st.stats_base.get(i).copied().unwrap_or(0)).collect();
    if let Some(p) = &st.pending {
        // A hot reload's pending half is in the live generation's maps (its STATS are live too).
        let same = p.generation == st.maps_generation();
        let (old, old_stats) = if same { (live, Vec::new()) } else { read_pinned(&gen_dir(&st.key, p.generation))? };
        for &(new, old_slot) in &p.slots {
            if let (Some(c), Some(o)) = (counters.get_mut(new as usize), old.get((p.counter_base + old_slot) as usize)) {
                *c = *c + count(o);
            }
        }
        for (s, o) in stats.iter_mut().zip(old_stats) {
            *s += o;
        }
    }
    let health = health_of(&st);
    let conn = match &st.stateful {
        Some(c) => {
            let dir = conn_dir(&st.key);
            Some(read_conn(&live_table_dir(&dir, c.max_flows), &dir.join(egress_common::MAP_CONN_STATS), c)?)
        }
        None => None,
    };
    let events = super::events::event_stats(&st)?;
    let dns = match &st.dns {
        Some(c) => Some(super::dns::read(&super::state::dns_dir(&st.key), super::dns::buckets(c.max_addresses))?),
        None => None,
    };
    Ok(Readout { state: st, counters, stats, health, conn, events, dns })
}

/// `egress counters --reset`: each chosen row (rule names; `None`: every rule
/// and the default policy) counts from now on. One snapshot per rule of what
/// it counted, kept in the state and subtracted from what is shown; the maps
/// are not touched, so no packet is lost. Returns (name, count reset, since).
pub fn reset_counters(t: &Target, only: Option<&[String]>) -> Result<Vec<(String, Count, u64)>> {
    ensure_bpffs()?;
    let key = t.key();
    let _lock = state::attachment_lock(&key)?;
    let st = state::read_state(&key)?.ok_or_else(|| no_state(t))?;
    if let Some(names) = only
        && let Some(missing) = names.iter().find(|n| *n != "(default)" && !st.rules.iter().any(|r| &r.name == *n))
    {
        return Err(DataplaneError::Other(format!("no rule named '{missing}' on {} ({})", t.iface, t.hook)));
    }
    let raw = raw_readout(st)?;
    let mut st = raw.state;
    let now = now_unix();
    let chosen = |name: &str| only.is_none_or(|n| n.iter().any(|x| x == name));
    let mut out = Vec::new();
    for (i, r) in st.rules.iter_mut().enumerate() {
        if chosen(&r.name) {
            let c = raw.counters.get(i + 1).copied().unwrap_or_default();
            out.push((r.name.clone(), c.since_reset(r.reset), r.since));
            r.reset = c;
            r.since = now;
        }
    }
    if chosen("(default)") {
        out.push(("(default)".to_string(), raw.counters[0].since_reset(st.default_reset), st.default_since));
        st.default_reset = raw.counters[0];
        st.default_since = now;
    }
    state::write_state(&st)?;
    Ok(out)
}

/// Every attachment with its link's health.
pub fn statuses() -> Result<Vec<(State, LinkHealth)>> {
    ensure_bpffs()?;
    Ok(state::all_states()?
        .into_iter()
        .map(|s| {
            let h = health_of(&s);
            (s, h)
        })
        .collect())
}

/// The state and link health of one attachment, if it has rules loaded.
pub fn status_of(t: &Target) -> Result<Option<(State, LinkHealth)>> {
    let Some(s) = state::read_state(&t.key())? else {
        return Ok(None);
    };
    let h = health_of(&s);
    Ok(Some((s, h)))
}

/// The health of an attachment: its classifier's link and, in stateful mode, its
/// companion's (without the companion, replies and inbound connections are not
/// seen, so the attachment is not whole: `egress run` re-applies it).
/// The health of an attachment's links (interface hooks and companion, or a cgroup's).
pub(super) fn health_of(s: &State) -> LinkHealth {
    if s.hook == crate::hook::Hook::Cgroup {
        return super::cgroup::health(&s.key, s.cgroup_id, &s.iface);
    }
    let main = link::health(&link_pin(&s.key), s.ifindex, s.nl_priority.is_some());
    match &s.companion {
        Some(c) if main == LinkHealth::Attached => link::health(&companion_pin(&s.key), s.ifindex, c.contains("clsact")),
        _ => main,
    }
}
