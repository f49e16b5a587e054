//! Diagnostics for TOML files read with toml_edit: byte offsets to line numbers,
//! the span of an item, did-you-mean for unknown keys. Used by the rule file
//! parser and the `egress run` config parser.

use std::ops::Range;

use toml_edit::Item;

pub(crate) fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

/// Did-you-mean for an unknown key.
pub(crate) fn suggest(key: &str, known: &[&str]) -> String {
    let best = known.iter().map(|k| (distance(key, k), *k)).min().filter(|(d, _)| *d <= 2);
    match best {
        Some((_, k)) => format!("unknown key '{key}' (did you mean '{k}'?)"),
        None => format!("unknown key '{key}' (known keys: {})", known.join(", ")),
    }
}

/// Levenshtein distance; keys are short.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = if ca == *cb { 0 } else { 1 };
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(crate) fn line_starts(text: &str) -> Vec<usize> {
    // Sized first: growing a vector of a large file's line starts by
    // doubling copies it and faults its pages in again.
    let mut starts = Vec::with_capacity(memchr::memchr_iter(b'\n', text.as_bytes()).count() + 1);
    starts.push(0);
    starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
    starts
}
