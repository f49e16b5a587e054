//! `egress completions SHELL` and `egress man`: shell completions and manual
//! pages generated from the clap definitions (clap_complete, clap_mangen), so
//! they never drift from `--help`.

use std::path::Path;

use clap::CommandFactory as _;

use crate::cli::Cli;

/// The completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "egress", &mut std::io::stdout());
}

/// egress(1) on stdout; with `dir`, egress.1 and a page per command
/// (egress-apply.1, ...) written there.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        None => {
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        }
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("create {}: {e}", d.display()))?;
            clap_mangen::generate_to(cmd, d).map_err(|e| anyhow::anyhow!("write the manual pages to {}: {e}", d.display()))?;
            let n = std::fs::read_dir(d)
                .map(|r| r.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "1")).count())
                .unwrap_or(0);
            eprintln!("{n} manual pages in {}", d.display());
        }
    }
    Ok(())
}
