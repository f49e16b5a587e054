//! `egress run`: a foreground service that enforces the rule files named in its
//! config on their interfaces and follows them.
//!
//! - `config`: the config file (pure parser).
//! - `iface`: one managed interface; reconciles it through `reload`, the same
//!   replacement path as `egress apply`.
//! - `watch`: inotify on the folders of the config and rule files.
//! - `sd`: systemd's readiness notifications.
//!
//! Events: a change in a watched folder (at once when a write ends, else
//! debounced) reloads the config if its
//! content changed and reconciles the interfaces whose rule file lives there
//! (a file whose digest equals the enforced one costs a read, never a compile);
//! SIGHUP reloads the config and reconciles every interface; a periodic check
//! (`--recheck`) applies rules to interfaces that appeared or were re-created and
//! re-attaches severed links; SIGTERM/SIGINT stop the service, leaving
//! enforcement in place unless `--detach-on-exit`.

pub mod config;
mod iface;
mod sd;
mod watch;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

pub use config::{Config, IfaceConfig};
use iface::{Managed, Outcome};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    dataplane::{self, RunLock},
    hook::Hook,
    observe::metrics,
};

pub struct Options {
    pub config_path: PathBuf,
    pub detach_on_exit: bool,
    /// Period of the check for missing, re-created or severed interfaces.
    pub recheck: Duration,
    /// Serve Prometheus metrics on this listener (`--metrics`).
    pub metrics: Option<metrics::Listener>,
}

/// Runs the service until SIGTERM/SIGINT. Returns the exit status: 0 after a
/// signal; 2 when at start no interface could be applied because of invalid rule
/// files, 1 for any other failure to start.
pub fn run(cfg: Config, opts: Options) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(service(cfg, opts))
}

/// A managed attachment: interface name and hook (one interface may carry
/// several hooks, each with its own rule file).
type ManagedKey = (String, Hook);

struct Service {
    opts: Options,
    cookie: u64,
    ifaces: BTreeMap<ManagedKey, Managed>,
    config_digest: Option<String>,
    /// What the metrics endpoint reads (kept current by `publish`).
    shared: Arc<metrics::Shared>,
}

impl Service {
    /// Hands the metrics endpoint the current view of every managed attachment.
    fn publish(&self) {
        let tracked = self
            .ifaces
            .values()
            .map(|m| metrics::Tracked {
                iface: m.cfg.name.clone(),
                hook: m.cfg.hook.as_str(),
                target: m.target.clone(),
                reloads: m.reloads,
                failures: m.failures,
                last_reload: m.last_reload,
                rules_file: m.cfg.rules.display().to_string(),
                file_applied: m.file_applied(),
                error: m.last_error.clone(),
            })
            .collect();
        if let Ok(mut t) = self.shared.tracked.lock() {
            *t = tracked;
        }
    }

    fn files(&self) -> Vec<&Path> {
        std::iter::once(self.opts.config_path.as_path())
            .chain(self.ifaces.values().flat_map(|m| {
                std::iter::once(m.cfg.rules.as_path()).chain(m.inputs.iter().map(|p| p.as_path())).chain(m.cgroup.as_deref())
            }))
            .collect()
    }

    /// Brings the managed set in line with a (new) config: new interfaces are
    /// locked and applied, removed ones detached, changed ones reconciled.
    fn adopt_config(&mut self, cfg: Config, why: &str) {
        let keys: Vec<ManagedKey> = cfg.interfaces.iter().map(|c| (c.name.clone(), c.hook)).collect();
        let gone: Vec<ManagedKey> = self.ifaces.keys().filter(|k| !keys.contains(k)).cloned().collect();
        for k in gone {
            if let Some(mut m) = self.ifaces.remove(&k) {
                m.detach("removed from the config");
            }
        }
        for c in cfg.interfaces {
            match self.ifaces.get_mut(&(c.name.clone(), c.hook)) {
                Some(m) => {
                    let changed = m.cfg != c;
                    m.cfg = c;
                    if changed {
                        m.reconcile(why, true);
                    }
                }
                None => match RunLock::acquire(self.cookie, &c.name, c.hook) {
                    Ok(lock) => {
                        let key = (c.name.clone(), c.hook);
                        let mut m = Managed::new(c, lock);
                        m.reconcile(why, true);
                        self.ifaces.insert(key, m);
                    }
                    Err(e) => tracing::error!(iface = c.name, "{e}"),
                },
            }
        }
    }

    fn reload_config(&mut self, why: &str, force: bool) {
        let digest = crate::reload::file_digest(&self.opts.config_path);
        if !force && digest == self.config_digest {
            return;
        }
        match Config::load(&self.opts.config_path) {
            Ok(cfg) => {
                tracing::info!(config = %self.opts.config_path.display(), why, interfaces = cfg.interfaces.len(), "config loaded");
                self.config_digest = digest;
                self.adopt_config(cfg, why);
            }
            Err(e) => {
                self.config_digest = digest;
                tracing::error!(config = %self.opts.config_path.display(), "{e}\nthe running config stays in force");
            }
        }
    }
}

async fn service(cfg: Config, opts: Options) -> anyhow::Result<u8> {
    let cookie = dataplane::netns_cookie()?;
    // Refuse before touching anything when another service manages one of these interfaces.
    let mut locks = Vec::new();
    for c in &cfg.interfaces {
        locks.push(RunLock::acquire(cookie, &c.name, c.hook)?);
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let (mut watch, mut events) = watch::Watch::new();
    let shared = Arc::new(metrics::Shared::default());
    let mut opts = opts;
    if let Some(m) = opts.metrics.take() {
        // Bound before anything is applied (main.rs), in the namespace egress started in.
        m.socket.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(m.socket)?;
        let addr = m.addr;
        tracing::info!(%addr, netns = m.netns, "serving Prometheus metrics on http://{addr}/metrics (network namespace {}, where egress was started)", m.netns);
        tokio::spawn(metrics::serve(l, shared.clone()));
    }

    let config_digest = crate::reload::file_digest(&opts.config_path);
    let mut svc = Service { opts, cookie, ifaces: BTreeMap::new(), config_digest, shared };
    tracing::info!(config = %svc.opts.config_path.display(), interfaces = cfg.interfaces.len(), pid = std::process::id(), "egress run starting");
    let mut outcomes = Vec::new();
    for (c, lock) in cfg.interfaces.into_iter().zip(locks) {
        let key = (c.name.clone(), c.hook);
        let mut m = Managed::new(c, lock);
        outcomes.push(m.reconcile("start", true));
        svc.ifaces.insert(key, m);
    }
    let ok = |o: &Outcome| matches!(o, Outcome::Applied | Outcome::Unchanged | Outcome::Missing);
    if !outcomes.iter().any(ok) {
        let code = if outcomes.iter().all(|o| *o == Outcome::Invalid) { 2 } else { 1 };
        tracing::error!("no interface could be applied; stopping");
        return Ok(code);
    }
    watch.set(&svc.files());
    svc.publish();
    sd::notify("READY=1");
    tracing::info!(
        "running; SIGHUP reloads, SIGTERM stops (enforcement stays{})",
        if svc.opts.detach_on_exit { " unless --detach-on-exit" } else { "" }
    );

    let mut tick = tokio::time::interval(svc.opts.recheck);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Deny events are logged in batches (the kernel rate-limits them per rule).
    let mut events_tick = tokio::time::interval(Duration::from_millis(200));
    events_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                sd::notify("RELOADING=1");
                tracing::info!("SIGHUP: reloading the config and every rule file");
                svc.reload_config("SIGHUP", true);
                for m in svc.ifaces.values_mut() {
                    m.reconcile("SIGHUP", true);
                }
                watch.set(&svc.files());
                svc.publish();
                sd::notify("READY=1");
            }
            Some((dir, done)) = events.recv() => {
                // A write still under way (data, a new file): wait for the event
                // that ends it (close, rename), at most 50 ms. Then handle each
                // folder of the burst once.
                let mut dirs = vec![dir];
                if !done {
                    let until = tokio::time::Instant::now() + Duration::from_millis(50);
                    while let Ok(Some((d, done))) = tokio::time::timeout_at(until, events.recv()).await {
                        if !dirs.contains(&d) {
                            dirs.push(d);
                        }
                        if done {
                            break;
                        }
                    }
                }
                while let Ok((d, _)) = events.try_recv() {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
                for d in &dirs {
                    if svc.opts.config_path.parent() == Some(d.as_path()) {
                        svc.reload_config("config changed", false);
                    }
                    for m in svc.ifaces.values_mut() {
                        if m.watches(d) {
                            m.reconcile("rule or set file changed", false);
                        }
                    }
                }
                watch.set(&svc.files());
                svc.publish();
            }
            _ = events_tick.tick() => {
                for m in svc.ifaces.values_mut() {
                    m.log_events();
                    m.log_debug();
                }
            }
            _ = tick.tick() => {
                for m in svc.ifaces.values_mut() {
                    if m.needs_check() {
                        m.reconcile("interface check", false);
                    }
                }
                watch.set(&svc.files());
                svc.publish();
            }
        }
    };
    sd::notify("STOPPING=1");
    if svc.opts.detach_on_exit {
        for m in svc.ifaces.values_mut() {
            m.detach("--detach-on-exit");
        }
        tracing::info!(signal = stop, "stopped; rules detached");
    } else {
        tracing::info!(signal = stop, "stopped; enforcement stays in place (`egress detach` removes it)");
    }
    Ok(0)
}
