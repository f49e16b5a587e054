//! The parse of a rule file that changed a little since its last parse
//! (`egress run` keeps a [`ParseCache`] per file): the rule blocks (from one
//! `[[rule]]` header line to the next) it shares with the last parse at its
//! start and at its end are taken from there, and only the blocks between are
//! parsed. A rule taken over keeps what it parsed to, with its position and
//! line moved (one named after its position, `rule-N`, is parsed again).
//! Anything this cannot take (a changed preamble or set, a file the chunked
//! parse would not take, any problem) is the one-piece parse's: messages are
//! always its messages, and the result always equals it (unit test).

use foldhash::HashSet;

use super::{
    RuleFileError, RuleSet,
    chunked::{Preamble, chunked_rules, parse_chunk, preamble},
    parse::{parse_with, rule_headers},
    toml_diag::line_starts,
};

/// What the last parse of a file left for the next one.
pub struct ParseCache {
    file: String,
    text: String,
    headers: Vec<usize>,
    /// The line of each header (1-based).
    lines: Vec<usize>,
    pre: Preamble,
    rules: Vec<super::Rule>,
}

impl ParseCache {
    /// Hands the last parse's rules back for the next parse to take over (it
    /// does not copy them). Until then, or with rules that are not that
    /// parse's, the next parse is a whole one.
    pub fn restore(&mut self, rules: Vec<super::Rule>) {
        if rules.len() == self.headers.len() {
            self.rules = rules;
        }
    }
}

/// How many rules the last [`parse_incremental`] took over unparsed (tests, logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    pub reused: usize,
    pub parsed: usize,
    /// What changed since the last parse, when it is a few rules in one
    /// place (the compiler's recompile takes it).
    pub edit: Option<Edited>,
}

/// The rules at positions `at..at + removed.len()` of the last parse were
/// replaced by the new parse's `at..at + added`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edited {
    pub at: usize,
    pub removed: Vec<super::Rule>,
    pub added: usize,
}

/// Most rules an [`Edited`] describes (past it, the edit is not reported).
const MAX_EDITED: usize = 64;

/// [`parse_with`], reusing what `cache` holds of the file's last parse, and
/// leaving there what the next parse can reuse (nothing after a one-piece parse).
pub fn parse_incremental(
    file: &str,
    text: &str,
    loader: &dyn crate::sets::Loader,
    cache: &mut Option<ParseCache>,
) -> (Result<RuleSet, RuleFileError>, Reuse) {
    match incremental(file, text, loader, cache.take()) {
        Some((rs, c, reuse)) => {
            *cache = Some(c);
            (Ok(rs), reuse)
        }
        None => {
            let rs = parse_with(file, text, loader);
            let parsed = rs.as_ref().map_or(0, |r| r.rules.len());
            (rs, Reuse { reused: 0, parsed, edit: None })
        }
    }
}

fn incremental(file: &str, text: &str, loader: &dyn crate::sets::Loader, prev: Option<ParseCache>) -> Option<(RuleSet, ParseCache, Reuse)> {
    let starts = line_starts(text);
    let headers = rule_headers(text, &starts);
    let n = headers.len();
    if n == 0 || n > egress_common::MAX_RULES as usize {
        return None;
    }
    let pre = preamble(file, text, &starts, &headers, loader)?;
    let end = |h: &[usize], t: &str, i: usize| h.get(i + 1).copied().unwrap_or(t.len());
    let prev = prev.filter(|p| p.file == file && p.pre == pre);
    // Blocks shared with the last parse: `a` at the start, `b` at the end.
    let (a, b) = match &prev {
        None => (0, 0),
        Some(p) => {
            let m = p.headers.len();
            let same = |i: usize, j: usize| text[headers[i]..end(&headers, text, i)] == p.text[p.headers[j]..end(&p.headers, &p.text, j)];
            let mut a = 0;
            while a < n.min(m) && same(a, a) {
                a += 1;
            }
            let mut b = 0;
            while b < (n - a).min(m - a) && same(n - 1 - b, m - 1 - b) {
                b += 1;
            }
            (a, b)
        }
    };
    // The line of each header: one pass over both sorted lists.
    let lines: Vec<usize> = {
        let mut k = 0;
        headers
            .iter()
            .map(|&h| {
                while k < starts.len() && starts[k] <= h {
                    k += 1;
                }
                k.max(1)
            })
            .collect()
    };
    let mut rules = Vec::new();
    // The last parse's rules between its shared blocks (the edit's).
    let mut edited: Option<Vec<super::Rule>> = None;
    match prev {
        Some(p) if a + b > 0 && p.rules.len() == p.headers.len() => {
            // Taken over, not copied: the cache is this parse's to consume.
            // The edit's rules are spliced out and the new ones in, in place
            // (the tail moves once).
            let m = p.headers.len();
            let fresh = if a < n - b {
                let range = headers[a]..if b == 0 { text.len() } else { headers[n - b] };
                parse_chunk(file, text, &starts, a, range, pre.default_policy, pre.audit, &pre.sets)?.1
            } else {
                Vec::new()
            };
            rules = p.rules;
            edited = Some(rules.splice(a..m - b, fresh).collect());
            if rules.len() != n {
                return None;
            }
            for k in 0..b {
                let (i, j) = (n - b + k, m - b + k);
                let r = &mut rules[i];
                let old = r.index;
                r.index = i as u32 + 1;
                // (The name is formatted only when it could be one: a 100k-rule
                // tail costs 100k allocations otherwise.)
                if r.index != old && r.name.starts_with("rule-") && r.name == format!("rule-{old}") {
                    // Named after its position: parsed again at the new one.
                    let range = headers[i]..end(&headers, text, i);
                    *r = parse_chunk(file, text, &starts, i, range, pre.default_policy, pre.audit, &pre.sets)?.1.pop()?;
                } else {
                    r.line = (r.line + lines[i]).checked_sub(p.lines[j])?;
                }
            }
        }
        // Nothing to reuse: every CPU on a large file, else one piece of rules.
        _ => match chunked_rules(file, text, &starts, &headers, &pre) {
            Some(rs) => rules = rs,
            None => rules.extend(parse_chunk(file, text, &starts, 0, headers[0]..text.len(), pre.default_policy, pre.audit, &pre.sets)?.1),
        },
    }
    // What the one-piece parse checks across rules: unique names, no names
    // by domain (they need [dns], which the preamble here never holds).
    let mut names = HashSet::with_capacity_and_hasher(n, Default::default());
    if rules.len() != n || !rules.iter().all(|r| names.insert(r.name.as_str()) && r.fqdn.is_empty()) {
        return None;
    }
    let reused = if edited.is_some() { a + b } else { 0 };
    let edit = edited.and_then(|removed| {
        let added = n - a - b;
        (removed.len() + added <= MAX_EDITED).then_some(Edited { at: a, removed, added })
    });
    let reuse = Reuse { reused, parsed: n - reused, edit };
    let rs = RuleSet {
        default_policy: pre.default_policy,
        audit: pre.audit,
        rules,
        state: pre.state,
        events: pre.events,
        sets: pre.sets.sets.clone(),
        dns: None,
    };
    // The rules themselves come back with `restore`, once the caller is done
    // with them: a copy of 100k rules costs more than the rest of the parse.
    let cache = ParseCache { file: file.to_string(), text: text.to_string(), headers, lines, pre, rules: Vec::new() };
    Some((rs, cache, reuse))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn whole(text: &str) -> Result<RuleSet, RuleFileError> {
        parse_with("r.toml", text, &crate::sets::NoFiles)
    }

    #[test]
    fn incremental_parses_equal_the_one_piece_parse() {
        let mut rng = StdRng::seed_from_u64(11);
        let base = crate::ruleset_gen::realistic(700, 50, 2);
        let starts = line_starts(&base);
        let heads = rule_headers(&base, &starts);
        let pre = base[..heads[0]].to_string();
        let mut blocks: Vec<String> =
            (0..heads.len()).map(|i| base[heads[i]..heads.get(i + 1).copied().unwrap_or(base.len())].to_string()).collect();
        let mut cache = None;
        let mut reused = 0;
        let (mut last, mut edits): (Option<RuleSet>, usize) = (None, 0);
        for step in 0..60 {
            let at = rng.gen_range(0..blocks.len());
            match step % 5 {
                // Insert a named rule, an unnamed one, remove, change ports, a bad rule.
                0 => blocks.insert(
                    at,
                    format!("[[rule]]\nname = \"new{step}\"\naction = \"deny\"\nprotocol = \"tcp\"\nports = \"{}\"\n\n", 100 + step),
                ),
                1 => blocks.insert(at, "[[rule]]\naction = \"allow\"\nprotocol = \"udp\"\n\n".to_string()),
                2 => {
                    blocks.remove(at);
                }
                3 => blocks[at] = blocks[at].replacen("action = \"deny\"", "action = \"allow\"", 1),
                _ => {
                    let bad = format!("[[rule]]\nname = \"bad{step}\"\nports = \"99999\"\nprotocol = \"tcp\"\n\n");
                    let text = format!("{pre}{}{bad}", blocks.concat());
                    let (got, _) = parse_incremental("r.toml", &text, &crate::sets::NoFiles, &mut cache);
                    assert_eq!(got.unwrap_err().to_string(), whole(&text).unwrap_err().to_string(), "step {step}");
                }
            }
            let text = format!("{pre}{}", blocks.concat());
            let (got, reuse) = parse_incremental("r.toml", &text, &crate::sets::NoFiles, &mut cache);
            let got = got.unwrap();
            assert_eq!(got, whole(&text).unwrap(), "step {step}");
            reused += reuse.reused;
            // The edit the recompile takes: what it says was taken out, and
            // the rules around it unchanged (but for their position).
            if let (Some(e), Some(prev)) = (&reuse.edit, &last) {
                assert_eq!(prev.rules[e.at..e.at + e.removed.len()], e.removed[..], "step {step}");
                assert_eq!(got.rules.len() + e.removed.len(), prev.rules.len() + e.added, "step {step}");
                assert_eq!(got.rules[..e.at], prev.rules[..e.at], "step {step}");
                let tail = |r: &[crate::rules::Rule]| r.iter().map(|r| (r.action, r.summary())).collect::<Vec<_>>();
                let (n, m) = (got.rules.len(), prev.rules.len());
                let k = m - e.at - e.removed.len();
                assert_eq!(tail(&got.rules[n - k..]), tail(&prev.rules[m - k..]), "step {step}");
                edits += 1;
            }
            if let Some(c) = cache.as_mut() {
                c.restore(got.rules.clone());
            }
            last = Some(got);
        }
        assert!(reused > 60 * 500, "most rules were taken over: {reused}");
        assert!(edits > 40, "most parses said what changed: {edits}");
        // A changed preamble: parsed whole, equal again.
        let text = format!("default_policy = \"deny\"\n{}", blocks.concat());
        let (got, reuse) = parse_incremental("r.toml", &text, &crate::sets::NoFiles, &mut cache);
        assert_eq!((got.unwrap(), reuse.reused), (whole(&text).unwrap(), 0));
    }
}
