//! Hot reloads (egress-common's halves.rs): a replacement that keeps the
//! loaded program. The new rule set is written into the idle half of the live
//! maps, then one write of EPOCH makes it the live half. No program load, no
//! verifier, no link update: what a reload costs is writing the rule set.
//!
//! Readers never see a mix: a packet reads EPOCH once and is classified and
//! counted by one half; the idle half is written while no packet reads it (the
//! previous reload waited for an RCU grace period after its flip, so no CPU
//! still runs with the old EPOCH). The rule maps are compared and written
//! through their memory mappings (mmap.rs), only the entries that differ from
//! what the idle half holds; EPOCH by one aligned 4-byte store, which no
//! reader sees torn. Counters carry over as in a full replacement (apply.rs):
//! the old half is the pending one.
//!
//! Hot reloads serve stateless rule sets without rules by name on an
//! interface hook (their program reads EPOCH: egress-common's `GLOBAL_HOT`).
//! Stateful mode, rules by name and cgroups, anything else the program was
//! built for (default policy, flow cache, events, debug), a program another
//! build of egress loaded (its maps' layout and its reading of them may not be
//! this build's) and a rule set that outgrows a half take the full path;
//! [`refusal`] says why.

use std::time::Instant;

use aya::maps::{Array, Map, MapData};
use egress_common::{MAP_COUNTERS, MAP_EPOCH, half_of};

use super::{
    DataplaneError, Result,
    apply::{Applied, ApplyRequest, Carry, ReloadPath, carry, fold_pending, removed},
    fill::tables,
    load::flow_cache_slots,
    map_err,
    mmap::Mapped,
    state::{self, Pending, State, gen_dir, now_unix},
};
use crate::{compile::place::place, hook::Hook};

/// Why `req` cannot be hot reloaded over `p`; None: it can.
pub(super) fn refusal(p: &State, req: &ApplyRequest<'_>) -> Option<String> {
    let why = if p.hook == Hook::Cgroup {
        "a cgroup attachment".to_string()
    } else if p.dns.is_some() || !req.compiled.fqdn.is_empty() {
        "rules by name (dst_fqdn)".to_string()
    } else if p.stateful.is_some() || req.state.is_some() {
        "stateful mode".to_string()
    } else if p.default_action != req.default_action || p.default_audit != req.default_audit {
        "the default policy changed".to_string()
    } else if p.flow_cache != flow_cache_slots(req.flow_cache) {
        "the flow cache's size changed".to_string()
    } else if p.halves.is_none() {
        "the loaded maps have one half".to_string()
    } else if p.halves.as_ref().is_some_and(|h| h.object != super::object_digest()) {
        "the loaded program is another build of egress (an upgrade or a downgrade): this one's is loaded".to_string()
    } else if open(&p.key, p.maps_generation(), MAP_COUNTERS)
        .and_then(super::counters::as_map)
        .is_ok_and(|m| matches!(m, Map::PerCpuArray(_)))
    {
        "the loaded maps count per CPU (an earlier egress)".to_string()
    } else if p.halves.as_ref().is_some_and(|h| h.events != req.events) {
        "the [events] settings changed".to_string()
    } else if p.debug != req.debug {
        "debug mode changed".to_string()
    } else if let Some(m) = p.halves.as_ref().and_then(|h| h.caps.overflow(req.compiled)) {
        format!("the rule set outgrew its half of {m}")
    } else {
        // A reload that stopped between its flip and its state file.
        match open(&p.key, p.maps_generation(), MAP_EPOCH).and_then(read_epoch) {
            Ok(e) if p.halves.as_ref().is_some_and(|h| h.epoch == e) => return None,
            Ok(_) => "EPOCH differs from the state file".to_string(),
            Err(e) => format!("EPOCH unreadable: {e}"),
        }
    };
    Some(why)
}

/// An array map of generation `g` of attachment `key`, from its pin.
fn open(key: &str, generation: u64, name: &str) -> Result<MapData> {
    let p = gen_dir(key, generation).join(name);
    MapData::from_pin(&p).map_err(map_err(format!("open pinned map {}", p.display())))
}

/// EPOCH as the kernel holds it.
fn read_epoch(m: MapData) -> Result<u32> {
    let a: Array<MapData, u32> = Array::try_from(Map::Array(m)).map_err(map_err("open EPOCH"))?;
    a.get(&0, 0).map_err(map_err("read EPOCH"))
}

/// Writes `req`'s rule set into the idle half of `prev`'s maps, makes it live,
/// and carries the counters over. Only after [`refusal`] said None.
pub(super) fn reload(mut prev: State, req: ApplyRequest<'_>) -> Result<Applied> {
    let start = Instant::now();
    let h = prev.halves.clone().ok_or_else(|| DataplaneError::Other("no halves to reload into".into()))?;
    let (key, g) = (prev.key.clone(), prev.maps_generation());
    let key = key.as_str();
    let next = h.epoch.wrapping_add(1);
    let b = h.caps.bases(half_of(next));
    let c = req.compiled;
    let placed = place(c, &b);
    super::counters::zero(&open(key, g, MAP_COUNTERS)?, b.counters, c.counter_slots)?;
    // The idle half holds an older rule set (two reloads ago, or zeros after
    // a load): compared in place, only the entries that differ are written.
    let mut written = 0;
    for (name, base, size, bytes) in tables(&b, &placed) {
        written += Mapped::new(&open(key, g, name)?, name)?.write_diff(base, size, bytes)?;
    }
    // The flip: from here on every packet that reads EPOCH gets the new half.
    Mapped::new(&open(key, g, MAP_EPOCH)?, MAP_EPOCH)?.store_u32(0, next)?;
    let enforced_at = Instant::now();
    let enforced = enforced_at - start;

    let now = now_unix();
    let mut rules = (req.rules)();
    let Carry { slots, carried, default: (default_base, default_since, default_reset) } =
        carry(Some(&prev), &mut rules, &req.default_action, now);
    // The previous rules are only needed for the report of those removed:
    // taken out, not copied with the rest of the state.
    let (old_rules, old_base) = (std::mem::take(&mut prev.rules), prev.counter_base());
    let mut st = State {
        // A new rule-set generation, in the maps of the loaded one.
        generation: prev.generation + 1,
        maps: Some(g),
        rules_file: req.rules_file,
        digest: req.digest,
        loaded_at: now,
        rules,
        default_base,
        default_since,
        default_reset,
        pending: Some(Pending { generation: g, slots, counter_base: old_base }),
        halves: Some(state::Halves { epoch: next, ..h }),
        ..prev
    };
    let t = Instant::now();
    state::write_state(&st)?;
    let stated = t.elapsed();
    let old_final = fold_pending(&mut st)?;
    tracing::debug!(
        key,
        enforced_us = enforced.as_micros() as u64,
        state_us = stated.as_micros() as u64,
        fold_us = (t.elapsed() - stated).as_micros() as u64,
        "hot reload done"
    );
    let removed = removed(old_base, old_rules, &carried, old_final.as_ref());
    let kept = carried.iter().filter(|c| **c).count();
    Ok(Applied { state: st, replaced: true, kept, removed, path: ReloadPath::Hot { enforced, written }, enforced_at })
}

#[cfg(test)]
mod tests {
    #[test]
    fn epoch_bumps_alternate_halves() {
        assert_eq!(egress_common::half_of(7), 1);
        assert_eq!(egress_common::half_of(8), 0);
        assert_ne!(egress_common::cache_generation(3, 1), egress_common::cache_generation(3, 3));
        assert_ne!(egress_common::cache_generation(u32::MAX, 0), 0);
    }
}
