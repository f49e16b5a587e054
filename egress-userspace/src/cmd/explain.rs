//! `egress explain`'s front end: where the packet is asked about (an
//! interface, a cgroup, a process, a rule file) and the answer's text and JSON.

use std::process::ExitCode;

use egress::{dataplane, explain, hook::Hook, reload};
use serde_json::json;

use crate::{InputError, cli, enter, input};

/// `egress explain`: the live classifier and the reference (--iface,
/// --cgroup, --pid), or the reference alone (--rules). Exit 1 if the two ever
/// disagree.
pub fn explain_cmd(
    netns: &Option<String>,
    at: cli::HookedIface,
    pid: Option<u32>,
    rules: Option<std::path::PathBuf>,
    q: &explain::Query,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = rules {
        let p = reload::prepare(&path).map_err(input)?;
        let (m, note) = q.with_source(&p.rules, None).map_err(|e| anyhow::Error::new(InputError(e.to_string())))?;
        let a = explain::reference(&p.rules, &m);
        if json {
            let mut v = a.json();
            if let Some(n) = note {
                v["src"] = json!(m.src.to_string());
                v["src_note"] = json!(n);
            }
            println!("{v}");
        } else {
            println!("packet     {}{}", q.describe(&m), note.map(|n| format!("  ({n})")).unwrap_or_default());
            println!("reference  {}  ({})", a.text(), p.file);
        }
        return Ok(ExitCode::SUCCESS);
    }
    enter("explain", netns)?;
    let process = pid.map(dataplane::process).transpose()?;
    let t = match (&at.iface, &at.cgroup, &process) {
        (_, _, Some(p)) => p.decided_by.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "process {} ({}) in cgroup {}: no cgroup at or above it has egress rules (`egress status` lists them); an interface's rules may still apply: explain --iface",
                p.pid,
                p.comm,
                p.cgroup.display()
            )
        })?,
        (_, Some(path), None) => dataplane::resolve_cgroup(path)?,
        (Some(iface), None, None) => dataplane::resolve(iface, at.hook)?,
        (None, None, None) => anyhow::bail!("give --iface, --cgroup, --pid or --rules"),
    };
    let l = explain::live(&t, q)?;
    if json {
        let mut v = l.kernel.json();
        v["reference"] = l.reference.json();
        v["agree"] = json!(l.agree());
        if t.hook == Hook::Cgroup {
            v["cgroup"] = json!(t.iface);
        } else {
            v["iface"] = json!(t.iface);
        }
        v["hook"] = json!(t.hook);
        v["generation"] = json!(l.generation);
        v["rules_file"] = json!(l.rules_file);
        if let Some(n) = &l.src_note {
            v["src"] = json!(l.meta.src.to_string());
            v["src_note"] = json!(n);
        }
        if let Some(p) = &process {
            v["pid"] = json!(p.pid);
            v["comm"] = json!(p.comm);
            v["process_cgroup"] = json!(p.cgroup.display().to_string());
        }
        println!("{v}");
    } else {
        println!("packet     {}{}", q.describe(&l.meta), l.src_note.as_ref().map(|n| format!("  ({n})")).unwrap_or_default());
        if let Some(p) = &process {
            let own =
                if p.cgroup.as_os_str() == t.iface.as_str() { String::new() } else { format!("; decided by the rules of {}", t.iface) };
            println!("process    {} ({}) in cgroup {}{own}", p.pid, p.comm, p.cgroup.display());
        }
        let at = if t.hook == Hook::Cgroup { t.describe() } else { format!("{} {}", t.iface, t.hook) };
        println!("kernel     {}  ({at}, generation {})", l.kernel.text(), l.generation);
        println!("reference  {}  ({}){}", l.reference.text(), l.rules_file, if l.agree() { "" } else { "  DISAGREES" });
    }
    if !l.agree() {
        eprintln!("error: the kernel classifier and the reference classifier disagree on this packet: please report it");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
