//! Rule files parsed in chunks on all CPUs (from 512 rules: one chunk per CPU
//! up to 4,096 rules each); any doubt falls back to the one-piece parse
//! (`parse::parse_whole`), so messages are always its messages.

use std::{collections::HashSet, ops::Range};

use toml_edit::{ImDocument, Item};

use super::{
    Action, Rule, RuleSet,
    parse::{Ctx, parse_rule},
    sets::{SetTable, is_sets_key, parse_sets},
    state::{is_state_key, parse_state},
};

/// Rules per chunk when a large file is parsed in pieces.
pub(super) const CHUNK_RULES: usize = 4096;
/// The fewest rules per chunk: a file of fewer than two such chunks, or on one
/// CPU of fewer than two full chunks, is parsed in one piece.
const MIN_CHUNK_RULES: usize = 256;

/// A parsed chunk: its first rule's position, its rules, the names they use.
pub(super) type Chunk = (usize, Vec<Rule>, HashSet<String>);

/// What a file says before its first `[[rule]]`, when it says nothing else
/// than a chunked parse can take.
#[derive(Clone, PartialEq)]
pub(super) struct Preamble {
    pub(super) default_policy: Action,
    pub(super) audit: bool,
    pub(super) state: Option<super::state::StateConfig>,
    pub(super) events: super::events::EventsConfig,
    pub(super) sets: SetTable,
}

/// The preamble (default_policy, mode, events, the stateful-mode keys and
/// sets, nothing else), valid; `None`: use the one-piece parse.
pub(super) fn preamble(file: &str, text: &str, starts: &[usize], headers: &[usize], loader: &dyn crate::sets::Loader) -> Option<Preamble> {
    // Multi-line strings could hide a header line; such files take the safe path.
    if memchr::memmem::find(text.as_bytes(), b"\"\"\"").is_some() || memchr::memmem::find(text.as_bytes(), b"'''").is_some() {
        return None;
    }
    let first = *headers.first()?;
    let pre = ImDocument::parse(&text[..first]).ok()?;
    if pre.as_table().iter().any(|(k, _)| k != "default_policy" && k != "mode" && k != "events" && !is_state_key(k) && !is_sets_key(k)) {
        return None;
    }
    let mut pcx = Ctx { file, line_starts: starts, offset: 0, problems: Vec::new() };
    let state = parse_state(&mut pcx, pre.as_table());
    let events = super::events::parse_events(&mut pcx, pre.as_table());
    let sets = parse_sets(&mut pcx, pre.as_table(), loader);
    let audit = match pre.get("mode") {
        None => false,
        Some(item) => super::parse::parse_mode(&mut pcx, item, None, None)?,
    };
    if !pcx.problems.is_empty() {
        return None;
    }
    let default_policy = match pre.get("default_policy")?.as_str()? {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        _ => return None,
    };
    Some(Preamble { default_policy, audit, state, events, sets })
}

/// Rules per chunk for a file of `n` rules; `None`: too few to split.
fn chunk_size(n: usize) -> Option<(usize, usize)> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if n >= 2 * CHUNK_RULES {
        Some((CHUNK_RULES, cpus))
    } else if cpus >= 2 && n >= 2 * MIN_CHUNK_RULES {
        Some((n.div_ceil(cpus).max(MIN_CHUNK_RULES), cpus))
    } else {
        None
    }
}

/// The chunked parse of a valid large file; `None`: use the one-piece parse.
/// `headers`: the byte offsets of the `[[rule]]` header lines (already within
/// the rule-count limit).
pub(super) fn parse_chunked(
    file: &str,
    text: &str,
    starts: &[usize],
    headers: &[usize],
    loader: &dyn crate::sets::Loader,
) -> Option<RuleSet> {
    chunk_size(headers.len())?;
    let pre = preamble(file, text, starts, headers, loader)?;
    let rules = chunked_rules(file, text, starts, headers, &pre)?;
    let Preamble { default_policy, audit, state, events, sets } = pre;
    Some(RuleSet { default_policy, audit, rules, state, events, sets: sets.sets, dns: None })
}

/// The rules of a large file whose preamble `pre` says, parsed one chunk per
/// CPU; `None`: use the one-piece parse.
pub(super) fn chunked_rules(file: &str, text: &str, starts: &[usize], headers: &[usize], pre: &Preamble) -> Option<Vec<Rule>> {
    let (size, cpus) = chunk_size(headers.len())?;
    let (default_policy, audit, sets) = (pre.default_policy, pre.audit, &pre.sets);
    // (first rule index, byte range) of each chunk.
    let mut chunks: Vec<(usize, Range<usize>)> = Vec::new();
    for (k, group) in headers.chunks(size).enumerate() {
        let end = headers.get((k + 1) * size).copied().unwrap_or(text.len());
        chunks.push((k * size, group[0]..end));
    }
    let workers = cpus.min(chunks.len());
    let per_worker: Vec<Option<Vec<Chunk>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let mine: Vec<(usize, Range<usize>)> = chunks.iter().skip(w).step_by(workers).cloned().collect();
                sc.spawn(move || -> Option<Vec<Chunk>> {
                    mine.into_iter()
                        .map(|(first, range)| parse_chunk(file, text, starts, first, range, default_policy, audit, sets))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    let mut parts: Vec<Chunk> = per_worker.into_iter().collect::<Option<Vec<_>>>()?.into_iter().flatten().collect();
    parts.sort_by_key(|p| p.0);
    let mut names: HashSet<String> = HashSet::new();
    let mut rules = Vec::with_capacity(headers.len());
    for (_, part, part_names) in parts {
        for n in part_names {
            // A name used in two chunks: the one-piece parse reports it properly.
            if !names.insert(n) {
                return None;
            }
        }
        rules.extend(part);
    }
    // Rules by name need [dns], which the preamble never holds here: the
    // one-piece parse says so.
    if rules.iter().any(|r| !r.fqdn.is_empty()) {
        return None;
    }
    (rules.len() == headers.len()).then_some(rules)
}

/// One chunk: exactly its `[[rule]]` tables, every one valid.
#[allow(clippy::too_many_arguments)]
pub(super) fn parse_chunk(
    file: &str,
    text: &str,
    starts: &[usize],
    first: usize,
    range: Range<usize>,
    default_policy: Action,
    audit: bool,
    sets: &SetTable,
) -> Option<Chunk> {
    let doc = ImDocument::parse(&text[range.clone()]).ok()?;
    let root = doc.as_table();
    if root.len() != 1 {
        return None;
    }
    let Some(Item::ArrayOfTables(a)) = root.get("rule") else { return None };
    let mut cx = Ctx { file, line_starts: starts, offset: range.start, problems: Vec::new() };
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(a.len());
    for (i, t) in a.iter().enumerate() {
        let index = (first + i) as u32 + 1;
        rules.push(parse_rule(&mut cx, t, t.span(), index, Some(default_policy), audit, &mut names, sets)?);
    }
    cx.problems.is_empty().then_some((first, rules, names))
}
