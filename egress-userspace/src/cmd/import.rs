//! `egress import cloudstack` and `egress apply --cloudstack`: read the files,
//! run the (pure) importer, write or hand on its rule file.

use std::{io::Write as _, path::Path};

use egress::{
    import::cloudstack::{self, ImportError, Imported, Options},
    input, rules,
};
use serde_json::json;

use crate::{
    InputError,
    cli::{CloudStackOptions, PolicyArg},
};

fn input_err(m: String) -> anyhow::Error {
    anyhow::Error::new(InputError(m))
}

/// Imports a CloudStack rule export; the rule file it makes is checked with
/// egress's own parser before anyone sees it.
pub fn import(file: &Path, o: &CloudStackOptions) -> anyhow::Result<Imported> {
    let shown = file.display().to_string();
    let text = input::read_text(file, "CloudStack export").map_err(input_err)?;
    let offering = match &o.offering {
        Some(p) => Some((p.display().to_string(), input::read_text(p, "offering file").map_err(input_err)?)),
        None => None,
    };
    let opts = Options {
        default_policy: o.default_policy.map(|p| if p == PolicyArg::Allow { rules::Action::Allow } else { rules::Action::Deny }),
        offering,
        network: o.network.clone(),
        guest_cidr: o.guest_cidr,
        skip_invalid: o.skip_invalid,
        merge_ports: o.merge_ports,
    };
    let imported = match cloudstack::import(&shown, &text, &opts) {
        Ok(i) => i,
        Err(ImportError::Input(m)) => return Err(input_err(m)),
        Err(ImportError::Rules(problems)) => {
            let mut rules: Vec<usize> = problems.iter().map(|p| p.index).collect();
            rules.dedup();
            let mut m = format!(
                "{shown}: {} invalid rule(s) ({} problem(s)), nothing written (--skip-invalid imports the rest)",
                rules.len(),
                problems.len()
            );
            for p in &problems {
                m.push_str(&format!("\n  {p}"));
            }
            return Err(input_err(m));
        }
    };
    if let Err(e) = rules::parse(&format!("{shown} (imported)"), &imported.toml) {
        anyhow::bail!("the rule file imported from {shown} does not validate (please report this): {e}");
    }
    for p in &imported.skipped {
        eprintln!("warning: {shown}: skipped {p}");
    }
    Ok(imported)
}

/// The one-line summary on stderr.
pub fn summary(file: &Path, i: &Imported) -> String {
    let mut s = format!(
        "imported {} rule(s) from {} (default policy {}, from {}: every rule {})",
        i.rules,
        file.display(),
        i.default_policy.as_str(),
        i.policy_from,
        cloudstack::verb(i.default_policy.opposite())
    );
    if !i.inactive.is_empty() {
        s.push_str(&format!("; {} not Active, left out", i.inactive.len()));
    }
    if i.other_networks > 0 {
        s.push_str(&format!("; {} of other networks left out", i.other_networks));
    }
    if !i.skipped.is_empty() {
        s.push_str(&format!("; {} invalid, skipped", i.skipped_rules()));
    }
    s
}

/// `egress import cloudstack`.
pub fn run(file: &Path, o: &CloudStackOptions, output: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let i = import(file, o)?;
    match output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(i.toml.as_bytes())?;
            out.flush()?;
        }
        Some(out) => {
            egress::input::write_atomically(out, i.toml.as_bytes(), None).map_err(|e| anyhow::anyhow!("write {}: {e}", out.display()))?;
            if json {
                let inactive: Vec<_> = i.inactive.iter().map(|(id, st)| json!({"id": id, "state": st})).collect();
                println!(
                    "{}",
                    json!({"output": out.display().to_string(), "rules": i.rules, "default": i.default_policy.as_str(),
                           "inactive": inactive, "skipped": i.skipped, "other_networks": i.other_networks})
                );
            }
        }
    }
    eprintln!("{}", summary(file, &i));
    Ok(())
}
