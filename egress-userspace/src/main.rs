//! The `egress` binary: parse arguments, run, map errors to exit codes.
//! 0 = success, 2 = invalid rule file, config or usage, 1 = anything else.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser as _;
use egress::{
    counters, dataplane, explain,
    reload::{self, ReloadError},
    service,
};
use serde_json::json;

use egress::hook::Hook;

use crate::cli::{Cli, Command, LogFormat};

/// mimalloc: parsing and compiling a large rule file makes millions of small
/// allocations; glibc's malloc spent a fifth of `apply` on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error for which exit status 2 applies (bad input, not a system failure).
#[derive(Debug)]
pub(crate) struct InputError(pub(crate) String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for InputError {}

pub(crate) fn input(e: ReloadError) -> anyhow::Error {
    match e {
        ReloadError::Input(m) => anyhow::Error::new(InputError(m)),
        ReloadError::Dataplane(d) => anyhow::Error::new(d),
    }
}

fn main() -> ExitCode {
    dataplane::closed_pipe_ends_process(true);
    let cli = Cli::parse();
    egress::input::set_max_file_size(cli.max_file_size);
    egress::input::set_allow_insecure(cli.allow_insecure_files);
    let (default_level, json_logs) = match &cli.command {
        Command::Run { log_format, .. } => {
            dataplane::closed_pipe_ends_process(false);
            ("info", *log_format == LogFormat::Json)
        }
        _ => ("warn", false),
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("EGRESS_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal as _;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    if json_logs {
        fmt.json().flatten_event(true).init();
    } else {
        fmt.init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(input) = e.downcast_ref::<InputError>() {
                eprintln!("error: {input}");
                ExitCode::from(2)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

pub(crate) fn need_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); try sudo");
    }
    Ok(())
}

/// Root, the namespace asked for with --netns, and the host's bpffs; all before
/// any thread starts (setns refuses multi-threaded callers for mount namespaces).
pub(crate) fn enter(what: &str, netns: &Option<String>) -> anyhow::Result<()> {
    need_root(what)?;
    if let Some(ns) = netns {
        dataplane::enter_netns(ns)?;
    }
    dataplane::enter_host_mount_ns()?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { rules, json, strict } => {
            // Read once: the file may be a pipe (--rules /dev/stdin).
            let text = egress::input::read_text(&rules, "rule file").map_err(|e| anyhow::Error::new(InputError(e)))?;
            if json {
                // Problems as JSON too, for CI pipelines; still exit 2.
                if let Err(e) = egress::rules::parse_with(&rules.display().to_string(), &text, &egress::input::FsLoader::for_rules(&rules))
                {
                    println!("{}", json!({"file": rules.display().to_string(), "valid": false, "problems": e.problems}));
                    return Err(anyhow::Error::new(InputError(e.to_string())));
                }
            }
            let p = reload::prepare_text(&rules, &text).map_err(input)?;
            if !json {
                for w in p.warning_lines() {
                    eprintln!("{w}");
                }
                if strict {
                    p.strict().map_err(input)?;
                }
            }
            if json {
                let counts: serde_json::Map<String, serde_json::Value> =
                    p.compiled.entry_counts().iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                let mut v = json!({"file": p.file, "valid": true, "rules": p.rules.rules.len(),
                       "default": p.rules.default_policy.as_str(), "stateful": p.rules.state.is_some(), "state": p.rules.state,
                       "digest": p.digest, "map_entries": counts, "warnings": p.warnings});
                // Only for a file with sets: the shape is otherwise the one it always was.
                if !p.rules.sets.is_empty() {
                    v["sets"] = json!(p.rules.sets.iter().map(|s| s.json()).collect::<Vec<_>>());
                }
                // Likewise for a file with rules by name.
                if let Some(d) = p.rules.dns.as_ref().filter(|_| p.rules.has_fqdn()) {
                    v["dns"] = d.json(&p.rules);
                }
                println!("{v}");
                if strict {
                    p.strict().map_err(input)?;
                }
            } else {
                let mode = match &p.rules.state {
                    Some(s) => format!(
                        "stateful (tcp {}s/{}s, udp {}s, icmp {}s, {} flows)",
                        s.tcp_established, s.tcp_closing, s.udp, s.icmp, s.max_flows
                    ),
                    None => "stateless".into(),
                };
                println!(
                    "{}: ok, {} rules, default {}, {mode}, {}",
                    p.file,
                    p.rules.rules.len(),
                    p.rules.default_policy.as_str(),
                    reload::entries(&p.compiled)
                );
                for s in &p.rules.sets {
                    println!("  {}", s.summary());
                }
                if let Some(d) = p.rules.dns.as_ref().filter(|_| p.rules.has_fqdn()) {
                    for line in d.summary(&p.rules) {
                        println!("  {line}");
                    }
                }
            }
        }
        Command::Apply { iface, cgroup, unit, hook, rules, cloudstack, cs, flow_cache, json, strict, events_rate, debug } => {
            // Validated completely (and a CloudStack export imported) before anything is touched.
            let (mut p, imported) = match (rules, cloudstack) {
                (Some(r), _) => (reload::prepare(&r).map_err(input)?, None),
                (None, Some(file)) => {
                    let i = cmd::import::import(&file, &cs)?;
                    eprintln!("{}", cmd::import::summary(&file, &i));
                    let shown = std::path::PathBuf::from(format!("{} (imported)", file.display()));
                    (reload::prepare_text(&shown, &i.toml).map_err(input)?, Some(i.toml))
                }
                (None, None) => anyhow::bail!("give --rules FILE or --cloudstack FILE"),
            };
            if let Some(rate) = events_rate {
                p.rules.events.rate = rate;
            }
            if !json || strict {
                for w in p.warning_lines() {
                    eprintln!("{w}");
                }
            }
            if strict {
                p.strict().map_err(input)?;
            }
            enter("apply", &cli.netns)?;
            let target = match (iface, cgroup, unit) {
                (Some(iface), _, _) => dataplane::resolve(&iface, hook)?,
                (None, Some(path), _) => dataplane::resolve_cgroup(&path)?,
                (None, None, Some(unit)) => dataplane::resolve_cgroup(&dataplane::unit_cgroup(&unit)?)?,
                (None, None, None) => anyhow::bail!("give --iface, --cgroup or --unit"),
            };
            if let Some(toml) = imported {
                let kept = dataplane::save_imported(&target.key(), &p.digest, &toml)?;
                p.canonical = kept.display().to_string();
            }
            let applied = reload::apply(&target, &p, flow_cache, debug).map_err(input)?;
            if json {
                let mut v = reload::applied_json(&applied);
                v["warnings"] = json!(p.warnings);
                println!("{v}");
            } else {
                print!("{}", reload::applied_text(&applied, &p));
            }
        }
        Command::Import { what: cli::ImportCommand::Cloudstack { rules, cs, output, json } } => {
            cmd::import::run(&rules, &cs, output.as_deref(), json)?;
        }
        Command::Events { at, json, count } => {
            enter("events", &cli.netns)?;
            let t = target_at(&at)?;
            let (mut st, mut events) = dataplane::open_events(&t)?;
            stream(count, || {
                let batch = events.next_batch(std::time::Duration::from_millis(500))?;
                if !batch.is_empty() {
                    // Rule names as enforced now (a reload may have changed them).
                    if let Some(now) = dataplane::read_state(&t.key())? {
                        st = now;
                    }
                }
                Ok(batch
                    .iter()
                    .map(|e| {
                        let ev = egress::observe::events::decode(e, &st, dataplane::mono_ns_to_unix_ns(e.time_ns));
                        if json { ev.json().to_string() } else { ev.text() }
                    })
                    .collect())
            })?;
        }
        Command::Log { at, json, count } => {
            enter("log", &cli.netns)?;
            let t = target_at(&at)?;
            let (_, mut log) = dataplane::open_debug_log(&t)?;
            stream(count, || {
                Ok(log
                    .next_batch(std::time::Duration::from_millis(500))
                    .iter()
                    .map(|line| egress::observe::debug_log::format(line, &t.iface, t.hook, json))
                    .collect())
            })?;
        }
        Command::Explain { iface, hook, cgroup, pid, rules, proto, src, dst, sport, dport, icmp_type, icmp_code, json } => {
            let q = explain::Query { proto, src, dst, sport, dport, icmp_type, icmp_code };
            q.meta().map_err(|e| anyhow::Error::new(InputError(e)))?;
            return cmd::explain::explain_cmd(&cli.netns, cli::HookedIface { iface, cgroup, hook }, pid, rules, &q, json);
        }
        Command::Counters { at, json, watch, interval, count, reset, rule } => {
            enter("counters", &cli.netns)?;
            let t = target_at(&at)?;
            if reset {
                let only = (!rule.is_empty()).then_some(rule.as_slice());
                let done = dataplane::reset_counters(&t, only)?;
                if json {
                    println!("{}", counters::reset_json(&t.iface, &done));
                } else {
                    print!("{}", counters::reset_table(&t.iface, &done));
                }
            } else if watch {
                cmd::watch::watch_counters(&t, interval, count, json)?;
            } else {
                let r = dataplane::read_counters(&t)?;
                if json {
                    println!("{}", counters::counters_json(&r));
                } else {
                    print!("{}", counters::counters_table(&r));
                }
            }
        }
        Command::Dns { at, json } => {
            enter("dns", &cli.netns)?;
            let t = target_at(&at)?;
            let (st, r) = dataplane::read_dns(&t)?;
            if json {
                println!("{}", egress::observe::dns::learned_json(&st, &r));
            } else {
                print!("{}", egress::observe::dns::learned_table(&st, &r));
            }
        }
        Command::Status { json, prune } => {
            enter("status", &cli.netns)?;
            let pruned = if prune { dataplane::prune()? } else { Vec::new() };
            let states = dataplane::statuses()?;
            if json {
                let mut v = counters::status_json(&states);
                if prune {
                    v["pruned"] = pruned.iter().map(|s| serde_json::Value::Object(s.at_json())).collect();
                }
                println!("{v}");
            } else {
                for s in &pruned {
                    if s.is_cgroup() {
                        println!("pruned cgroup {}: the cgroup is gone", s.iface);
                    } else {
                        println!("pruned {} (netns {}, ifindex {}): its interface is gone", s.iface, s.netns, s.ifindex);
                    }
                }
                print!("{}", counters::status_table(&states));
            }
        }
        Command::Detach { iface, cgroup, hook } => {
            enter("detach", &cli.netns)?;
            let target = target_at(&cli::HookedIface { iface, cgroup, hook })?;
            let what = target.describe();
            if dataplane::detach(&target)? {
                match target.hook {
                    Hook::Cgroup => println!("detached egress from {what}; its processes' traffic is no longer filtered"),
                    h => println!("detached egress from {what}; packets {} it there are no longer filtered", h.direction()),
                }
            } else if target.hook == Hook::Cgroup {
                anyhow::bail!("no rules loaded on {what}")
            } else {
                anyhow::bail!("no rules loaded on {what} in network namespace {}", target.netns)
            }
        }
        Command::Completions { shell } => cmd::docs::completions(shell),
        Command::Man { dir } => cmd::docs::man(dir.as_deref())?,
        Command::Run { config, detach_on_exit, log_format: _, recheck, metrics } => {
            let metrics =
                metrics.map(|m| egress::observe::metrics::parse_addr(&m)).transpose().map_err(|e| anyhow::Error::new(InputError(e)))?;
            // Absolute, so that its folder (and relative rule paths) can be watched.
            let config = std::path::absolute(&config).unwrap_or(config);
            // The config is checked before anything else, so a bad one exits 2.
            let cfg = service::Config::load(&config).map_err(|e| anyhow::Error::new(InputError(e)))?;
            need_root("run")?;
            // Here, before --netns: --netns chooses the interfaces, not where a scraper connects.
            let metrics = metrics.map(egress::observe::metrics::bind).transpose().map_err(|e| anyhow::anyhow!(e))?;
            enter("run", &cli.netns)?;
            let recheck = std::time::Duration::from_secs_f64(recheck.max(0.05));
            let opts = service::Options { config_path: config, detach_on_exit, recheck, metrics };
            return Ok(ExitCode::from(service::run(cfg, opts)?));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The attachment a read-only command names: an interface's hook, or a cgroup.
fn target_at(at: &cli::HookedIface) -> anyhow::Result<dataplane::Target> {
    match (&at.iface, &at.cgroup) {
        (_, Some(path)) => Ok(dataplane::resolve_cgroup_or_state(path)?),
        (Some(iface), None) => Ok(dataplane::resolve_or_state(iface, at.hook)?),
        (None, None) => anyhow::bail!("give --iface or --cgroup"),
    }
}

/// Prints the lines each call of `next` returns (a call waits up to half a
/// second for them), flushed line by line, until `count` lines are out or for
/// ever (`egress events`, `egress log`).
fn stream(count: Option<u64>, mut next: impl FnMut() -> anyhow::Result<Vec<String>>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        for line in next()? {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            seen += 1;
            if count.is_some_and(|n| seen >= n) {
                break;
            }
        }
    }
    Ok(())
}
