//! `egress explain` against the kernel: a fresh instance of the object whose
//! maps are the live generation's pinned ones, with only `egress_explain`
//! loaded (never attached), runs one synthetic packet through
//! BPF_PROG_TEST_RUN. That program writes nothing: no counter, flow-cache slot
//! or connection entry changes.

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use egress_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, ALL_MAPS, EXPLAIN_PROGRAM_NAME, MAP_CONN_V4, MAP_CONN_V6, MIN_MAX_FLOWS, conn_buckets,
};

use super::{
    DataplaneError, EBPF_OBJECT, Result,
    conn::conn_table_dir,
    dns::{DnsGlobals, DnsLoad, pin_paths as dns_pin_paths},
    env::{Target, has_ethernet},
    load::Globals,
    prog_err,
    state::{State, conn_dir, dns_dir, gen_dir, read_state},
};

/// What the live classifier decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Counter slot: the rule's 1-based position, 0 for the default policy.
    pub slot: u32,
    pub deny: bool,
    /// A deny in audit mode: counted, the packet passes.
    pub audit: bool,
    /// Part of a live connection (stateful mode): passed without the rules.
    pub established: bool,
}

/// Runs `frame` through the classifier of the rule set enforced at `t`, with
/// that rule set's maps. Also returns the state (rule names, file, digest).
pub fn explain(t: &Target, frame: &[u8]) -> Result<(State, Decision)> {
    let st = read_state(&t.key())?.ok_or_else(|| DataplaneError::Other(format!("no rules on {} ({})", t.iface, t.hook)))?;
    let default_action = match (st.default_action.as_str(), st.default_audit) {
        ("deny", true) => ACTION_AUDIT,
        ("deny", false) => ACTION_DENY,
        _ => ACTION_ALLOW,
    };
    let generation = st.generation.min(u32::MAX as u64) as u32;
    let globals = Globals::new(
        default_action,
        t.hook != crate::hook::Hook::Cgroup && has_ethernet(&t.iface)?,
        generation,
        u32::MAX,
        &st.stateful.unwrap_or_default(),
        &crate::rules::EventsConfig::default(),
    );
    // The live half of the generation's maps (hot.rs).
    let globals = match &st.halves {
        Some(h) => globals.with_halves(&h.caps),
        None => globals,
    };
    let mut loader = globals.loader();
    let conn_on = st.stateful.is_some() as u32;
    loader.override_global(egress_common::GLOBAL_CONN_ON, &conn_on, true);
    // Rules by name: the generation's patterns and the attachment's learned tables.
    let dns = match (&st.dns, st.dns_key) {
        (Some(config), Some(key)) => Some(DnsLoad { config: config.clone(), key, dir: dns_dir(&st.key) }),
        _ => None,
    };
    let dns_globals = DnsGlobals::new(dns.as_ref());
    let dns_paths = dns_pin_paths(dns.as_ref())?;
    super::dns::configure(&mut loader, dns.as_ref(), &dns_globals, &dns_paths, st.patterns.len() as u32);
    let gdir = gen_dir(&st.key, st.maps_generation());
    if dns.is_some() {
        for name in egress_common::DNS_GEN_MAPS {
            loader.map_pin_path(name, gdir.join(name));
        }
    }
    for name in ALL_MAPS {
        let path = gdir.join(name);
        if !path.exists() {
            return Err(DataplaneError::Other(format!(
                "map {name} of generation {} is not pinned at {}",
                st.maps_generation(),
                path.display()
            )));
        }
        loader.map_pin_path(name, path);
    }
    let table = st.stateful.map(|c| conn_table_dir(&conn_dir(&st.key), c.max_flows));
    match &table {
        Some(dir) if dir.join(MAP_CONN_V4).exists() => {
            loader.map_pin_path(MAP_CONN_V4, dir.join(MAP_CONN_V4)).map_pin_path(MAP_CONN_V6, dir.join(MAP_CONN_V6));
        }
        // Stateless, or a release's LRU table not yet carried over (the next
        // apply does): empty token tables (nothing is established).
        _ => {
            loader.map_max_entries(MAP_CONN_V4, conn_buckets(MIN_MAX_FLOWS)).map_max_entries(MAP_CONN_V6, conn_buckets(MIN_MAX_FLOWS));
        }
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|source| DataplaneError::Ebpf { op: "load the eBPF object for explain".into(), source: Box::new(source) })?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(EXPLAIN_PROGRAM_NAME)
        .ok_or_else(|| DataplaneError::Other(format!("program {EXPLAIN_PROGRAM_NAME} missing from the eBPF object")))?
        .try_into()
        .map_err(prog_err("explain program type"))?;
    prog.load().map_err(prog_err("load the explain program"))?;
    let r = prog
        .test_run(TestRunOptions { data_in: Some(frame), ..Default::default() })
        .map_err(prog_err("run the explain program (BPF_PROG_TEST_RUN)"))?;
    let v = r.return_value as i32;
    if v < 0 {
        return Err(DataplaneError::Other("the classifier cannot parse the synthetic packet".into()));
    }
    let v = v as u32;
    let action = v & 3;
    Ok((st, Decision { slot: v >> 3, deny: action != ACTION_ALLOW, audit: action == ACTION_AUDIT, established: v & 4 != 0 }))
}
