//! One interface (or cgroup) managed by `egress run`: make what is enforced
//! match its rule file, through the same replacement path as `egress apply`.

use std::path::Path;

use crate::{
    counters::rfc3339,
    dataplane::{self, LinkHealth, RunLock, Target},
    reload::{self, ReloadError},
};

use super::config::IfaceConfig;
use crate::hook::Hook;

/// A cgroup entry's directory: its path, or below the cgroup v2 mount when relative.
pub fn cgroup_dir(cfg: &IfaceConfig) -> Option<std::path::PathBuf> {
    if cfg.hook != Hook::Cgroup {
        return None;
    }
    let p = Path::new(&cfg.name);
    if p.is_absolute() { Some(p.to_path_buf()) } else { dataplane::cgroup2_mount().ok().map(|m| m.join(p)) }
}

/// Where the entry's rules go now: the interface's hook, or the cgroup.
fn resolve(cfg: &IfaceConfig) -> dataplane::Result<Target> {
    match cgroup_dir(cfg) {
        Some(dir) => dataplane::resolve_cgroup(&dir),
        None if cfg.hook == Hook::Cgroup => {
            Err(dataplane::DataplaneError::Other(format!("cgroup {}: no cgroup v2 hierarchy mounted", cfg.name)))
        }
        None => dataplane::resolve(&cfg.name, cfg.hook),
    }
}

/// What one reconciliation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The rule set was attached or replaced.
    Applied,
    /// Enforced already (same file content, flow cache, healthy link): nothing to do.
    Unchanged,
    /// The interface does not exist (yet).
    Missing,
    /// The rule file cannot be read or does not validate; the running rules stay.
    Invalid,
    /// The kernel refused; the running rules stay.
    Failed,
}

pub struct Managed {
    pub cfg: IfaceConfig,
    _lock: RunLock,
    /// Where the rules were last enforced by us (to notice a re-created interface).
    pub target: Option<Target>,
    /// Last outcome that was logged, so a persisting condition is logged once.
    last: Option<Outcome>,
    /// Digest of the rule file content last found invalid: the same content is
    /// not parsed (nor logged) again until it changes or SIGHUP.
    bad_digest: Option<String>,
    /// Rule sets applied or replaced (metrics).
    pub reloads: u64,
    /// Attempts that left the running rules in place (metrics).
    pub failures: u64,
    /// Unix seconds of the last successful reload (0: none).
    pub last_reload: u64,
    /// Why the last attempt left the running rules in place (`/readyz`).
    pub last_error: Option<String>,
    /// The deny events of the attachment (opened once its rules are applied),
    /// with the key it was opened for.
    events: Option<(String, dataplane::EventStream)>,
    /// Debug mode's log (opened once its rules are applied with `debug = true`).
    debug_log: Option<(String, dataplane::DebugLog)>,
    /// The files the rule file named at the last attempt (sets, the GeoIP
    /// database): watched, and part of the digest.
    pub inputs: Vec<std::path::PathBuf>,
    /// A cgroup entry's directory (its parent is watched).
    pub cgroup: Option<std::path::PathBuf>,
    /// The digest of what this service last enforced (applied or adopted).
    enforced_digest: Option<String>,
    /// The rule file's last parse and compile: the next reload parses only
    /// the rules that changed and recompiles only what they reach.
    cache: reload::ReloadCache,
}

impl Managed {
    pub fn new(cfg: IfaceConfig, lock: RunLock) -> Managed {
        Managed {
            cgroup: cgroup_dir(&cfg),
            cfg,
            _lock: lock,
            target: None,
            last: None,
            bad_digest: None,
            cache: reload::ReloadCache::default(),
            enforced_digest: None,
            inputs: Vec::new(),
            reloads: 0,
            failures: 0,
            last_reload: 0,
            last_error: None,
            events: None,
            debug_log: None,
        }
    }

    /// Whether the periodic check should reconcile: the interface appeared, was
    /// re-created (another index), or its link is no longer attached.
    pub fn needs_check(&self) -> bool {
        let Ok(t) = resolve(&self.cfg) else {
            return false;
        };
        match &self.target {
            // Appeared since the last attempt (invalid files wait for a change or SIGHUP).
            None => self.last == Some(Outcome::Missing),
            Some(old) if old.key() != t.key() => true,
            Some(_) => !matches!(dataplane::status_of(&t), Ok(Some((_, LinkHealth::Attached)))),
        }
    }

    /// Makes the enforced rules match the rule file. `why` says what triggered it;
    /// `force` (SIGHUP) also retries a file found invalid before.
    pub fn reconcile(&mut self, why: &str, force: bool) -> Outcome {
        let iface = self.cfg.name.clone();
        let file = self.cfg.rules.display().to_string();
        tracing::debug!(iface, why, "reconciling");
        let t = match resolve(&self.cfg) {
            Ok(t) => t,
            Err(e) => {
                if self.last != Some(Outcome::Missing) {
                    tracing::warn!(iface, "{e}; its rules are applied when it appears");
                }
                self.last_error = Some(format!("{e}; its rules are applied when it appears"));
                return self.done(Outcome::Missing);
            }
        };
        if let Some(old) = &self.target
            && old.key() != t.key()
        {
            if t.hook == Hook::Cgroup {
                tracing::info!(
                    cgroup = iface,
                    old_id = old.cgroup_id,
                    id = t.cgroup_id,
                    "cgroup re-created; applying its rules to the new one"
                );
            } else {
                tracing::info!(
                    iface,
                    old_ifindex = old.ifindex,
                    ifindex = t.ifindex,
                    "interface re-created; applying its rules to the new one"
                );
            }
            // The old link is severed: remove what it left behind.
            if let Err(e) = dataplane::detach(old) {
                tracing::debug!(iface, "clean up the old attachment: {e}");
            }
            self.target = None;
        }
        // Nothing to do when the enforced set is this file's content already (this
        // also adopts what an earlier `egress run` left pinned, counters and all).
        let read = reload::RuleText::read(&self.cfg.rules);
        let digest = read.inputs_digest(&self.inputs);
        if !force && digest.is_some() && digest == self.bad_digest {
            return self.done(Outcome::Invalid);
        }
        // The state is read only when it may hold this digest: not when the
        // file differs from what this service last enforced (a 100k-rule
        // state is tens of milliseconds to read, before every reload).
        let maybe_enforced = self.target.is_none() || self.enforced_digest.is_none() || self.enforced_digest == digest;
        if maybe_enforced
            && let (Some(d), Ok(Some((st, LinkHealth::Attached)))) = (digest.clone(), dataplane::status_of(&t))
            && st.digest == d
            && st.flow_cache == dataplane::flow_cache_slots(self.cfg.flow_cache)
        {
            if self.target.is_none() {
                tracing::info!(iface, file, generation = st.generation, rules = st.rules.len(), "rules already enforced; adopted");
                // The parse and compile the next change builds on: without
                // them the first change after a restart compiled whole.
                let (prepared, inputs) = reload::prepare_read_unlinted(&self.cfg.rules, read, Some(&mut self.cache));
                if let Ok(mut p) = prepared {
                    self.inputs = inputs;
                    self.cache.keep(&mut p, st.halves.as_ref().map(|h| h.caps));
                }
            }
            self.enforced_digest = Some(st.digest);
            self.target = Some(t);
            return self.done(Outcome::Unchanged);
        }
        // Linted after enforcement: a warning never delays a reload.
        let read_sha = read.sha();
        let (prepared, inputs) = reload::prepare_read_unlinted(&self.cfg.rules, read, Some(&mut self.cache));
        let inputs_changed = inputs != self.inputs;
        self.inputs = inputs;
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(iface, file, "{e}\nthe running rules stay enforced");
                self.last_error = Some(e.to_string());
                // The digest of the text that failed, not of the file as it
                // is now: an editor may have put a good file in its place
                // since, which must not be taken for this one and skipped.
                self.bad_digest = read_sha.and_then(|sha| reload::with_inputs(&sha, &self.inputs));
                self.failures += 1;
                return self.done(Outcome::Invalid);
            }
        };
        self.bad_digest = None;
        // The files it names were not known before this prepare (a restarted
        // service): what is enforced may be exactly this already.
        if inputs_changed
            && let Ok(Some((st, LinkHealth::Attached))) = dataplane::status_of(&t)
            && st.digest == prepared.digest
            && st.flow_cache == dataplane::flow_cache_slots(self.cfg.flow_cache)
        {
            tracing::info!(iface, file, generation = st.generation, rules = st.rules.len(), "rules already enforced; adopted");
            self.cache.keep(&mut prepared, st.halves.as_ref().map(|h| h.caps));
            self.enforced_digest = Some(st.digest);
            self.target = Some(t);
            return self.done(Outcome::Unchanged);
        }
        let started = std::time::Instant::now();
        let applied = reload::apply(&t, &prepared, self.cfg.flow_cache, self.cfg.debug);
        let (compile, compile_us) = (prepared.compile_path.name(), prepared.compile_us);
        let enforced_digest = prepared.digest.clone();
        // Linted after enforcement, on a thread of its own: a warning never
        // delays a reload, nor its log line.
        let (i, f) = (iface.clone(), file.clone());
        let caps = applied.as_ref().ok().and_then(|a| a.state.halves.as_ref()).map(|h| h.caps);
        self.cache.keep_linting(prepared, caps, move |warnings, took| {
            for w in warnings {
                tracing::warn!(iface = i, file = f, line = w.line, rule = w.rule, kind = w.kind, "{}", w.message);
            }
            tracing::debug!(iface = i, file = f, lint_us = took.as_micros() as u64, "rule file linted");
        });
        match applied {
            Ok(a) => {
                let st = &a.state;
                tracing::info!(
                    iface,
                    hook = st.hook.as_str(),
                    mode = st.mode,
                    file,
                    why,
                    generation = st.generation,
                    rules = st.rules.len(),
                    kept = a.kept,
                    removed = a.removed.len(),
                    ms = started.elapsed().as_millis() as u64,
                    after_enforced_us = a.enforced_at.elapsed().as_micros() as u64,
                    path = a.path.name(),
                    compile,
                    compile_us,
                    enforced_us = match &a.path {
                        dataplane::ReloadPath::Hot { enforced, .. } => Some(enforced.as_micros() as u64),
                        _ => None,
                    },
                    entries_written = match &a.path {
                        dataplane::ReloadPath::Hot { written, .. } => Some(*written),
                        _ => None,
                    },
                    full_because = match &a.path {
                        dataplane::ReloadPath::Full(why) => Some(why.as_str()),
                        _ => None,
                    },
                    "{}",
                    if a.replaced { "rules replaced" } else { "rules applied" }
                );
                for r in &a.removed {
                    tracing::info!(
                        iface,
                        rule = r.name,
                        action = r.action,
                        packets = r.count.packets,
                        bytes = r.count.bytes,
                        since = rfc3339(r.since),
                        "rule removed; final counts"
                    );
                }
                self.enforced_digest = Some(enforced_digest);
                self.target = Some(t);
                self.reloads += 1;
                self.last_reload = dataplane::now_unix();
                self.done(Outcome::Applied)
            }
            Err(ReloadError::Input(m)) => {
                tracing::error!(iface, file, "{m}\nthe running rules stay enforced");
                self.last_error = Some(m.clone());
                self.failures += 1;
                self.done(Outcome::Invalid)
            }
            Err(ReloadError::Dataplane(e)) => {
                tracing::error!(iface, file, "apply failed: {e}; the running rules stay enforced");
                self.last_error = Some(format!("apply failed: {e}"));
                self.failures += 1;
                self.done(Outcome::Failed)
            }
        }
    }

    /// Logs the deny events waiting in the attachment's ring buffer (never blocks).
    pub fn log_events(&mut self) {
        let Some(t) = &self.target else { return };
        let key = t.key();
        if self.events.as_ref().is_none_or(|(k, _)| *k != key) {
            self.events = dataplane::open_events(t).ok().map(|(_, s)| (key.clone(), s));
        }
        let Some((_, stream)) = &mut self.events else { return };
        let Ok(batch) = stream.next_batch(std::time::Duration::ZERO) else { return };
        if batch.is_empty() {
            return;
        }
        let Ok(Some(st)) = dataplane::read_state(&key) else { return };
        for e in batch {
            let ev = crate::observe::events::decode(&e, &st, dataplane::mono_ns_to_unix_ns(e.time_ns));
            tracing::info!(
                target: "egress::events",
                iface = ev.iface,
                hook = self.cfg.hook.as_str(),
                rule = ev.rule,
                audit = ev.audit,
                src = %ev.src,
                dst = %ev.dst,
                protocol = ev.protocol,
                sport = ev.sport,
                dport = ev.dport,
                icmp_type = ev.icmp_type,
                icmp_code = ev.icmp_code,
                len = ev.len,
                suppressed = ev.suppressed,
                qname = ev.qname,
                pid = ev.caller.as_ref().map(|c| c.0),
                comm = ev.caller.as_ref().map(|c| c.1.clone()),
                time = ev.time,
                "{}",
                if ev.audit { "audited (would deny)" } else { "denied" }
            );
        }
    }

    /// Logs the debug log's records waiting now (debug mode only; never blocks).
    pub fn log_debug(&mut self) {
        let Some(t) = self.target.as_ref().filter(|_| self.cfg.debug) else { return };
        let key = t.key();
        if self.debug_log.as_ref().is_none_or(|(k, _)| *k != key) {
            self.debug_log = dataplane::open_debug_log(t).ok().map(|(_, l)| (key.clone(), l));
        }
        let Some((_, log)) = &mut self.debug_log else { return };
        for line in log.next_batch(std::time::Duration::ZERO) {
            tracing::info!(target: "egress::ebpf", iface = t.iface, hook = self.cfg.hook.as_str(), "{}", line.message);
        }
    }

    fn done(&mut self, o: Outcome) -> Outcome {
        if matches!(o, Outcome::Applied | Outcome::Unchanged) {
            self.last_error = None;
        }
        self.last = Some(o);
        o
    }

    /// Whether the rule file, as it was at the last attempt, is what is enforced.
    pub fn file_applied(&self) -> bool {
        matches!(self.last, Some(Outcome::Applied | Outcome::Unchanged))
    }

    /// Whether `dir` holds this interface's rule file (or a file it names), or
    /// this cgroup (a service restarted by systemd gets a new cgroup there).
    pub fn watches(&self, dir: &Path) -> bool {
        self.cfg.rules.parent() == Some(dir)
            || self.inputs.iter().any(|p| p.parent() == Some(dir))
            || self.cgroup.as_ref().is_some_and(|c| c.parent() == Some(dir))
    }

    /// `--detach-on-exit`, or the interface left the config.
    pub fn detach(&mut self, why: &str) {
        let iface = self.cfg.name.clone();
        let target = self.target.take().or_else(|| resolve(&self.cfg).ok());
        if let Some(t) = target {
            match dataplane::detach(&t) {
                Ok(true) => tracing::info!(iface, why, "rules detached"),
                Ok(false) => {}
                Err(e) => tracing::error!(iface, "detach failed: {e}"),
            }
        }
    }
}
