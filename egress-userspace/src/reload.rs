//! The one replacement path shared by `egress apply` and `egress run`: read the
//! rule file, validate and compile it completely (no syscalls), and only then
//! hand it to the dataplane for one atomic replacement. A file that does not
//! validate is an [`ReloadError::Input`] carrying exactly the messages
//! `egress check` prints, and nothing in the kernel is touched.

use std::{fs, path::Path};

use serde_json::{Value, json};

use crate::{
    compile::{self, Compiled},
    counters::rfc3339,
    dataplane::{self, Applied, DataplaneError, RuleInfo, Target},
    rules::{self, RuleSet},
};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The rule file cannot be read or does not validate or compile (exit 2).
    #[error("{0}")]
    Input(String),
    /// The kernel or the system refused (exit 1).
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// What `egress run` keeps of a rule file's last prepare for the next one:
/// its parse (the next parses only the rules that changed) and its compile
/// (the next recompiles only what the changed rules reach).
#[derive(Default)]
pub struct ReloadCache {
    parse: Option<rules::ParseCache>,
    /// The compile of the parse above; put back by [`ReloadCache::keep`].
    compiled: Option<Compiled>,
    /// Recompiles since the last whole compile.
    recompiles: u32,
    /// The map sizes of the loaded program: a recompile that does not fit
    /// them (what only old values used stays until a whole compile) is
    /// compiled whole, so that it can still go in hot.
    loaded_caps: Option<compile::place::Caps>,
    /// The linter on a thread of its own ([`ReloadCache::keep_linting`]):
    /// it hands the rules back when it ends.
    linting: Option<std::thread::JoinHandle<Vec<rules::Rule>>>,
}

impl ReloadCache {
    /// Hands a prepared rule set's compile back for the next prepare, with
    /// the map sizes of the program it went into (when it did).
    /// The rules go back to the parse cache: `p` is spent.
    pub fn keep(&mut self, p: &mut Prepared, caps: Option<compile::place::Caps>) {
        self.settle();
        self.compiled = Some(std::mem::take(&mut p.compiled));
        self.loaded_caps = caps;
        if let Some(c) = self.parse.as_mut() {
            c.restore(std::mem::take(&mut p.rules.rules));
        }
    }

    /// [`ReloadCache::keep`], linting `p` first on a thread of its own (`egress
    /// run`, after the rules are enforced and the reload logged: a 100k-rule
    /// lint takes ~160 ms). `report` gets the warnings and the lint's time
    /// there; the rules go back to the parse cache when it ends, and the next
    /// prepare waits for that.
    pub fn keep_linting(
        &mut self,
        mut p: Prepared,
        caps: Option<compile::place::Caps>,
        report: impl FnOnce(&[crate::lint::Warning], std::time::Duration) + Send + 'static,
    ) {
        self.settle();
        self.compiled = Some(std::mem::take(&mut p.compiled));
        self.loaded_caps = caps;
        let spawned = std::thread::Builder::new().name("egress-lint".into()).spawn(move || {
            let t = std::time::Instant::now();
            p.lint();
            report(&p.warnings, t.elapsed());
            p.rules.rules
        });
        // No thread: the next parse is a whole one (nothing lost but time).
        self.linting = spawned.ok();
    }

    /// Waits for a lint still running and takes its rules back.
    fn settle(&mut self) {
        if let Some(Ok(rules)) = self.linting.take().map(|h| h.join())
            && let Some(c) = self.parse.as_mut()
        {
            c.restore(rules);
        }
    }
}

/// Recompiles in a row before a whole compile (which drops what they left unreachable).
const MAX_RECOMPILES: u32 = 256;

/// How a rule set was compiled (the service's log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompilePath {
    /// The whole rule set.
    Whole,
    /// The last compile, brought up to the few rules that changed.
    Incremental(compile::incremental::Recompiled),
}

impl CompilePath {
    pub fn name(&self) -> &'static str {
        match self {
            CompilePath::Whole => "whole",
            CompilePath::Incremental(_) => "incremental",
        }
    }
}

/// A validated, compiled rule file, ready to apply.
pub struct Prepared {
    /// The file as given.
    pub file: String,
    /// The file's absolute path when it can be resolved (recorded in the state).
    pub canonical: String,
    pub rules: RuleSet,
    pub compiled: Compiled,
    pub compile_path: CompilePath,
    /// Microseconds the compile took.
    pub compile_us: u64,
    /// Of the rule file and every file it names (`input::inputs_digest`).
    pub digest: String,
    /// The linter's warnings (lint.rs), in file order (after [`Prepared::lint`]
    /// for a rule file prepared unlinted).
    pub warnings: Vec<crate::lint::Warning>,
    /// The `default_policy` line, for the linter.
    default_line: usize,
    linted: bool,
}

impl Prepared {
    /// Runs the linter if it has not run (`egress run` lints after enforcing).
    pub fn lint(&mut self) {
        if !self.linted {
            self.warnings = crate::lint::lint(&self.rules, self.default_line);
            self.linted = true;
        }
    }

    /// The warnings as text lines: `warning: FILE:LINE: MESSAGE`.
    pub fn warning_lines(&self) -> Vec<String> {
        self.warnings.iter().map(|w| format!("warning: {}:{}: {}", self.file, w.line, w.message)).collect()
    }

    /// `--strict`: warnings make an input error (exit 2); the caller has shown them.
    pub fn strict(&self) -> Result<(), ReloadError> {
        if self.warnings.is_empty() {
            return Ok(());
        }
        Err(ReloadError::Input(format!("{}: {} lint warning(s) and --strict", self.file, self.warnings.len())))
    }
}

/// Reads, validates and compiles a rule file.
pub fn prepare(path: &Path) -> Result<Prepared, ReloadError> {
    prepare_tracked(path).0
}

/// [`prepare`], and the files the rule file named (sets, the GeoIP database),
/// also when it failed: `egress run` watches them.
pub fn prepare_tracked(path: &Path) -> (Result<Prepared, ReloadError>, Vec<std::path::PathBuf>) {
    let (mut p, inputs) = prepare_read_unlinted(path, RuleText::read(path), None);
    if let Ok(p) = p.as_mut() {
        p.lint();
    }
    (p, inputs)
}

/// A rule file read once for a reconcile (`egress run`): its text, or why it
/// cannot be used, and the digest of its bytes (for the check whether it is
/// what is enforced, and then for the prepare: a 10 MB file is read and
/// hashed once, not twice).
pub struct RuleText {
    text: Result<String, String>,
    sha: Option<String>,
}

impl RuleText {
    pub fn read(path: &Path) -> RuleText {
        let text = crate::input::read_text(path, "rule file");
        // Only of what was read: a second read could see another file (an
        // editor's next save), whose digest would then stand for this one.
        let sha = text.as_ref().ok().map(|t| crate::digest(t.as_bytes()));
        RuleText { text, sha }
    }

    /// The digest a rule set prepared from this text would have, if it names
    /// the files `inputs` (those of the last prepare) as they are now. None
    /// when a file cannot be read.
    pub fn inputs_digest(&self, inputs: &[std::path::PathBuf]) -> Option<String> {
        with_inputs(self.sha.as_deref()?, inputs)
    }

    /// The digest of the text's bytes (None when the file could not be read).
    pub fn sha(&self) -> Option<String> {
        self.sha.clone()
    }
}

/// [`prepare_tracked`] on a rule file already read, without the linter:
/// `egress run` enforces first and lints after ([`Prepared::lint`]). With
/// `cache`, the parse reuses the rules of the file's last parse that did not
/// change (rules/incremental.rs), and the compile recompiles only what they
/// reach (compile/incremental.rs).
pub fn prepare_read_unlinted(
    path: &Path,
    read: RuleText,
    cache: Option<&mut ReloadCache>,
) -> (Result<Prepared, ReloadError>, Vec<std::path::PathBuf>) {
    let text = match read.text {
        Ok(t) => t,
        Err(e) => return (Err(ReloadError::Input(e)), Vec::new()),
    };
    let loader = crate::input::FsLoader::for_rules(path);
    let p = prepare_loaded(path, &text, &loader, cache, read.sha.as_deref());
    (p, loader.inputs().into_iter().map(|(p, _)| p).collect())
}

/// [`prepare`] on a rule file's text already read (a pipe can be read once).
pub fn prepare_text(path: &Path, text: &str) -> Result<Prepared, ReloadError> {
    let mut p = prepare_loaded(path, text, &crate::input::FsLoader::for_rules(path), None, None)?;
    p.lint();
    Ok(p)
}

fn prepare_loaded(
    path: &Path,
    text: &str,
    loader: &crate::input::FsLoader,
    cache: Option<&mut ReloadCache>,
    rules_sha: Option<&str>,
) -> Result<Prepared, ReloadError> {
    let shown = path.display().to_string();
    let bytes = text.as_bytes();
    let t0 = std::time::Instant::now();
    let (rs, reuse, last) = match cache {
        Some(c) => {
            c.settle();
            // Taken: a prepare that fails leaves no compile behind to build on.
            let last = c.compiled.take();
            let (rs, reuse) = rules::parse_incremental(&shown, text, loader, &mut c.parse);
            (rs, reuse, Some((c, last)))
        }
        None => (rules::parse_with(&shown, text, loader), rules::Reuse::default(), None),
    };
    let rs = rs.map_err(|e| ReloadError::Input(e.to_string()))?;
    let t1 = std::time::Instant::now();
    let (compiled, compile_path) = compile_cached(&shown, &rs, &reuse, last)?;
    let t2 = std::time::Instant::now();
    let canonical = fs::canonicalize(path).map(|p| p.display().to_string()).unwrap_or_else(|_| shown.clone());
    let default_line = crate::lint::default_policy_line(text);
    let t3 = std::time::Instant::now();
    let digest = match rules_sha {
        Some(sha) => loader.digest_of(sha),
        None => loader.digest(bytes),
    };
    let us = |a: std::time::Instant, b: std::time::Instant| (b - a).as_micros() as u64;
    let (destinations, nesting) = match compile_path {
        CompilePath::Incremental(r) => (Some(r.destinations), Some(r.rules)),
        CompilePath::Whole => (None, None),
    };
    tracing::debug!(
        file = shown,
        rules = rs.rules.len(),
        parse_us = us(t0, t1),
        reused = reuse.reused,
        compile = compile_path.name(),
        compile_us = us(t1, t2),
        recompiled_destinations = destinations,
        recompiled_from_rules = nesting,
        digest_us = us(t3, std::time::Instant::now()),
        "rule file prepared"
    );
    Ok(Prepared {
        file: shown,
        canonical,
        rules: rs,
        compiled,
        compile_path,
        compile_us: us(t1, t2),
        digest,
        warnings: Vec::new(),
        default_line,
        linted: false,
    })
}

/// The compile of `rs`: the last one brought up to the parse's edit when there
/// is one and the recompile takes it, else the whole rule set.
fn compile_cached(
    shown: &str,
    rs: &RuleSet,
    reuse: &rules::Reuse,
    last: Option<(&mut ReloadCache, Option<Compiled>)>,
) -> Result<(Compiled, CompilePath), ReloadError> {
    let (mut cache, prev) = match last {
        Some((c, p)) => (Some(c), p),
        None => (None, None),
    };
    if let (Some(cache), Some(prev), Some(e)) = (cache.as_deref_mut(), prev, &reuse.edit)
        && cache.recompiles < MAX_RECOMPILES
    {
        let edit = compile::incremental::Edit { at: e.at, removed: &e.removed, added: e.added };
        if let Some((c, r)) = compile::incremental::recompile(prev, rs, &edit)
            && cache.loaded_caps.as_ref().is_none_or(|caps| caps.overflow(&c).is_none())
        {
            cache.recompiles += 1;
            return Ok((c, CompilePath::Incremental(r)));
        }
    }
    let compiled = compile::compile(rs).map_err(|e| ReloadError::Input(format!("{shown}: {e}")))?;
    if let Some(cache) = cache {
        cache.recompiles = 0;
    }
    Ok((compiled, CompilePath::Whole))
}

/// Applies a prepared rule set to an interface (attach, or replace atomically).
/// `debug`: attach the classifier's debug twin (`egress log` shows why it drops
/// packets it cannot parse).
pub fn apply(target: &Target, p: &Prepared, flow_cache: u32, debug: bool) -> Result<Applied, ReloadError> {
    let infos = || {
        p.rules
            .rules
            .iter()
            .map(|r| RuleInfo {
                name: r.name.clone(),
                action: r.action.as_str().to_string(),
                summary: r.summary(),
                base: Default::default(),
                since: 0,
                reset: Default::default(),
                audit: r.audit,
            })
            .collect()
    };
    Ok(dataplane::apply(dataplane::ApplyRequest {
        target,
        compiled: &p.compiled,
        flow_cache,
        rules_file: p.canonical.clone(),
        digest: p.digest.clone(),
        default_action: p.rules.default_policy.as_str().to_string(),
        default_audit: p.rules.default_code() == egress_common::ACTION_AUDIT,
        rules: Box::new(infos),
        state: p.rules.state,
        events: p.rules.events,
        debug,
        dns: p.rules.dns.clone(),
        src_any: !p.rules.names_sources(),
    })?)
}

/// `egress apply --json`.
pub fn applied_json(a: &Applied) -> Value {
    let st = &a.state;
    let removed: Vec<Value> = a
        .removed
        .iter()
        .map(|r| {
            json!({"name": r.name, "action": r.action, "match": r.summary, "packets": r.count.packets, "bytes": r.count.bytes,
                   "since": rfc3339(r.since)})
        })
        .collect();
    let mut v = json!({"hook": st.hook, "mode": st.mode, "replaced": a.replaced, "path": a.path.name(),
           "generation": st.generation, "rules": st.rules.len(), "kept": a.kept, "removed": removed,
           "default": st.default_action, "digest": st.digest, "flow_cache": st.flow_cache, "stateful": st.stateful.is_some(), "companion": st.companion, "debug": st.debug, "rules_file": st.rules_file,
           "pinned": dataplane::pin_dir(&st.key).display().to_string()});
    if let Some(m) = v.as_object_mut() {
        m.extend(st.at_json());
        match &a.path {
            dataplane::ReloadPath::Hot { enforced, written } => {
                m.insert("enforced_us".into(), json!(enforced.as_micros() as u64));
                m.insert("entries_written".into(), json!(written));
            }
            dataplane::ReloadPath::Full(why) => {
                m.insert("full_because".into(), json!(why));
            }
            dataplane::ReloadPath::Load => {}
        }
    }
    v
}

/// The human summary of `egress apply`.
pub fn applied_text(a: &Applied, p: &Prepared) -> String {
    let st = &a.state;
    let deny = p.rules.rules.iter().filter(|r| r.action == rules::Action::Deny).count();
    let verb = if a.replaced { "replaced rules" } else { "applied" };
    let mut out = if st.is_cgroup() {
        format!(
            "{verb} {} on cgroup {} (its processes' packets and connect/sendmsg calls, generation {})\n",
            p.file, st.iface, st.generation
        )
    } else {
        format!("{verb} {} on {} ({} hook ({}), generation {})\n", p.file, st.iface, st.hook, st.mode, st.generation)
    };
    out.push_str(&format!("  default policy  {}{}\n", st.default_action, if st.default_audit { " (audit: counted, passes)" } else { "" }));
    if let (Some(c), Some(_)) = (&st.companion, &st.stateful) {
        out.push_str(&format!("  stateful        yes: connection table pinned, companion program on {c}\n"));
    }
    if let (Some(c), Some(d)) = (&st.companion, &st.dns) {
        let res: Vec<String> = d.resolvers.iter().map(|a| a.to_string()).collect();
        out.push_str(&format!(
            "  by name         {} pattern(s), learned from DNS answers of {} (seen by the companion program on {c}); egress dns --iface {}\n",
            st.patterns.len(),
            res.join(", "),
            st.iface
        ));
    }
    let audit = p.rules.rules.iter().filter(|r| r.audit).count();
    let audited = if audit > 0 { format!(", {audit} of the denies in audit mode") } else { String::new() };
    out.push_str(&format!("  rules           {} ({} deny, {} allow{audited})\n", p.rules.rules.len(), deny, p.rules.rules.len() - deny));
    match &a.path {
        dataplane::ReloadPath::Hot { enforced, written } => out.push_str(&format!(
            "  reload          hot: {written} map entries written into the loaded program's idle half, enforced in {:.1} ms\n",
            enforced.as_secs_f64() * 1000.0
        )),
        dataplane::ReloadPath::Full(why) => out.push_str(&format!("  reload          full (new program and maps): {why}\n")),
        dataplane::ReloadPath::Load => {}
    }
    if a.replaced {
        out.push_str(&format!("  counters kept   {} rules (same name, match and action)\n", a.kept));
        for r in &a.removed {
            out.push_str(&format!(
                "  removed         {} ({} {}): {} packets, {} bytes since {}\n",
                r.name,
                r.action,
                r.summary,
                r.count.packets,
                r.count.bytes,
                rfc3339(r.since)
            ));
        }
    }
    for s in &p.rules.sets {
        out.push_str(&format!("  set             @{} {} entries ({})\n", s.name, s.entries.len(), s.describe()));
    }
    out.push_str(&format!("  map entries     {}\n", entries(&p.compiled)));
    out.push_str(&format!("  digest          {}\n", st.digest));
    if st.netns != "host" && !st.is_cgroup() {
        out.push_str(&format!("  netns           {}\n", st.netns));
    }
    out.push_str(&format!("  pinned at       {}\n", dataplane::pin_dir(&st.key).display()));
    out.push_str(&format!("  counters        egress counters {}\n", st.at_args()));
    if st.debug {
        out.push_str(&format!("  debug log       egress log --iface {} (why unparseable packets are dropped)\n", st.iface));
    }
    out
}

/// "DIR_V4 65536, SPAN_V4 5, ..." for summaries: the maps with entries.
pub fn entries(c: &Compiled) -> String {
    c.entry_counts().iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

/// The digest of a file's bytes as they are now (None when it cannot be read):
/// lets a watcher skip files whose content did not change without compiling them.
pub fn file_digest(path: &Path) -> Option<String> {
    fs::read(path).ok().map(|b| crate::digest(&b))
}

/// The digest of a rule file of digest `rules_sha` with the files `inputs` as they are now.
pub fn with_inputs(rules_sha: &str, inputs: &[std::path::PathBuf]) -> Option<String> {
    let read: Option<Vec<(std::path::PathBuf, String)>> = inputs.iter().map(|p| file_digest(p).map(|d| (p.clone(), d))).collect();
    Some(crate::input::inputs_digest(rules_sha, &read?))
}
