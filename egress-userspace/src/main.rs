//! The `egress` binary: parse arguments, run, map errors to exit codes.
//! 0 = success, 2 = invalid rule file or usage, 1 = anything else.

mod cli;

use std::{fs, path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use egress::{
    compile::{self, Compiled},
    counters, dataplane,
    rules::{self, RuleSet},
};
use serde_json::json;

use crate::cli::{Cli, Command};

/// mimalloc: parsing and compiling a large rule file makes millions of small
/// allocations; glibc's malloc spent a fifth of `apply` on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error for which exit status 2 applies (bad input, not a system failure).
#[derive(Debug)]
struct InputError(anyhow::Error);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}
impl std::error::Error for InputError {}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EGRESS_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
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

/// Reads, validates and compiles a rule file; every failure is an [`InputError`].
fn load_rules(path: &Path) -> anyhow::Result<(RuleSet, Compiled, String)> {
    let shown = path.display().to_string();
    let bytes = fs::read(path).with_context(|| format!("read rule file {shown}")).map_err(|e| anyhow::Error::new(InputError(e)))?;
    let text = String::from_utf8(bytes.clone()).map_err(|_| anyhow::Error::new(InputError(anyhow::anyhow!("{shown}: not UTF-8 text"))))?;
    let rs = rules::parse(&shown, &text).map_err(|e| anyhow::Error::new(InputError(e.into())))?;
    let compiled = compile::compile(&rs).map_err(|e| anyhow::Error::new(InputError(anyhow::anyhow!("{shown}: {e}"))))?;
    Ok((rs, compiled, egress::digest(&bytes)))
}

fn need_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); try sudo");
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { rules, json } => {
            if json {
                // Problems as JSON too, for CI pipelines; still exit 2.
                if let Ok(text) = fs::read_to_string(&rules)
                    && let Err(e) = egress::rules::parse(&rules.display().to_string(), &text)
                {
                    println!("{}", json!({"file": rules.display().to_string(), "valid": false, "problems": e.problems}));
                    return Err(anyhow::Error::new(InputError(e.into())));
                }
            }
            let (rs, compiled, digest) = load_rules(&rules)?;
            if json {
                let counts: serde_json::Map<String, serde_json::Value> =
                    compiled.entry_counts().iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                println!(
                    "{}",
                    json!({"file": rules.display().to_string(), "valid": true, "rules": rs.rules.len(),
                           "default": rs.default_policy.as_str(), "digest": digest, "map_entries": counts})
                );
            } else {
                println!(
                    "{}: ok, {} rules, default {}, {}",
                    rules.display(),
                    rs.rules.len(),
                    rs.default_policy.as_str(),
                    entries(&compiled)
                );
            }
            Ok(())
        }
        Command::Apply { iface, rules, flow_cache, json } => {
            let (rs, compiled, digest) = load_rules(&rules)?;
            need_root("apply")?;
            let rules_file = fs::canonicalize(&rules).unwrap_or(rules.clone()).display().to_string();
            dataplane::enter_host_mount_ns()?;
            let infos = rs
                .rules
                .iter()
                .map(|r| dataplane::RuleInfo { name: r.name.clone(), action: r.action.as_str().to_string(), summary: r.summary() })
                .collect();
            let applied = dataplane::apply(dataplane::ApplyRequest {
                iface: &iface,
                compiled: &compiled,
                flow_cache,
                rules_file,
                digest,
                default_action: rs.default_policy.as_str().to_string(),
                rules: infos,
            })?;
            let st = &applied.state;
            if json {
                println!(
                    "{}",
                    json!({"iface": st.iface, "hook": st.hook, "replaced": applied.replaced, "generation": st.generation,
                           "rules": st.rules.len(), "default": st.default_action, "digest": st.digest, "flow_cache": st.flow_cache,
                           "rules_file": st.rules_file, "pinned": dataplane::pin_dir(&iface).display().to_string()})
                );
            } else {
                let deny = rs.rules.iter().filter(|r| r.action == rules::Action::Deny).count();
                println!(
                    "{} {} on {} ({} egress hook, generation {})",
                    if applied.replaced { "replaced rules" } else { "applied" },
                    rules.display(),
                    iface,
                    st.hook,
                    st.generation
                );
                println!("  default policy  {}", st.default_action);
                println!("  rules           {} ({} deny, {} allow)", rs.rules.len(), deny, rs.rules.len() - deny);
                println!("  map entries     {}", entries(&compiled));
                println!("  digest          {}", st.digest);
                println!("  pinned at       {}", dataplane::pin_dir(&iface).display());
                println!("  counters        egress counters --iface {iface}");
            }
            Ok(())
        }
        Command::Counters { iface, json } => {
            need_root("counters")?;
            dataplane::enter_host_mount_ns()?;
            let r = dataplane::read_counters(&iface)?;
            if json {
                println!("{}", counters::counters_json(&r));
            } else {
                print!("{}", counters::counters_table(&r));
            }
            Ok(())
        }
        Command::Status { json } => {
            need_root("status")?;
            dataplane::enter_host_mount_ns()?;
            let states: Vec<_> = dataplane::all_states()?
                .into_iter()
                .map(|s| {
                    let attached = dataplane::link_present(&s.iface) || s.nl_priority.is_some();
                    (s, attached)
                })
                .collect();
            if json {
                println!("{}", counters::status_json(&states));
            } else {
                print!("{}", counters::status_table(&states));
            }
            Ok(())
        }
        Command::Detach { iface } => {
            need_root("detach")?;
            dataplane::enter_host_mount_ns()?;
            if dataplane::detach(&iface)? {
                println!("detached egress from {iface}; its traffic is no longer filtered");
                Ok(())
            } else {
                anyhow::bail!("no rules loaded on {iface} (nothing pinned under {})", dataplane::pin_dir(&iface).display())
            }
        }
    }
}

fn entries(c: &Compiled) -> String {
    c.entry_counts().iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}
