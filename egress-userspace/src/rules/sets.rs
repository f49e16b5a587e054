//! Named address sets in the rule file: `[[set]]` tables (a `file`, or
//! `country` codes looked up in the `[geoip]` database) and `@name` references
//! in `src`/`dst`. The files are read through the caller's [`Loader`]; their
//! lines are parsed and merged by `crate::sets`. Shared by the one-piece and
//! the chunked parse.
//!
//! ```toml
//! [geoip]
//! database = "/usr/share/GeoIP/GeoLite2-Country.mmdb"
//! [[set]]
//! name = "blocklist"
//! file = "firehol_level1.netset"    # relative to the rule file
//! [[set]]
//! name = "sanctioned"
//! country = ["KP", "IR"]
//! ```

use std::{collections::HashMap, ops::Range};

use toml_edit::{Item, Key, Table, TableLike, Value};

use super::{
    parse::{Ctx, show},
    toml_diag::{item_span, suggest},
};
use crate::sets::{self, Loader, Set, SetSource, geoip};

const SET_KEYS: [&str; 3] = ["name", "file", "country"];
const GEOIP_KEYS: [&str; 1] = ["database"];

/// The sets of a rule file, by name. A name whose set could not be loaded maps
/// to `None` (its problem is reported once, at the set).
#[derive(Clone, Default, PartialEq)]
pub(super) struct SetTable {
    pub(super) sets: Vec<Set>,
    pub(super) names: HashMap<String, Option<usize>>,
}

impl SetTable {
    /// Did-you-mean for an undefined `@name`.
    pub(super) fn undefined(&self, name: &str) -> String {
        let mut known: Vec<&str> = self.names.keys().map(String::as_str).collect();
        known.sort_unstable();
        if known.is_empty() {
            return format!("'@{name}' names no set: define it with a [[set]] table (name, and file or country)");
        }
        let close = known.iter().find(|k| super::toml_diag::distance(name, k) <= 2);
        match close {
            Some(k) => format!("'@{name}' names no set (did you mean '@{k}'?)"),
            None => format!("'@{name}' names no set (sets: {})", known.iter().map(|k| format!("@{k}")).collect::<Vec<_>>().join(", ")),
        }
    }
}

/// Whether a top-level key belongs to sets (the chunked parse's preamble check).
pub(super) fn is_sets_key(k: &str) -> bool {
    k == "set" || k == "geoip"
}

/// A set name: what `@name` can spell.
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= super::MAX_NAME_LEN && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Reads `[geoip]` and every `[[set]]`, loading each set through `loader`.
pub(super) fn parse_sets(cx: &mut Ctx<'_>, root: &Table, loader: &dyn Loader) -> SetTable {
    let mut table = SetTable::default();
    let database = parse_geoip(cx, root);
    let mut tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = Vec::new();
    match root.get("set") {
        None => {}
        Some(Item::ArrayOfTables(a)) => tables.extend(a.iter().map(|t| (t as &dyn TableLike, t.span()))),
        Some(Item::Value(Value::Array(a))) => {
            for v in a.iter() {
                match v.as_inline_table() {
                    Some(t) => tables.push((t as &dyn TableLike, v.span())),
                    None => cx.push(v.span(), None, Some("set"), format!("each set must be a table, not {}", v.type_name())),
                }
            }
        }
        Some(other) => cx.push(item_span(other), None, Some("set"), "sets are written as [[set]] tables".into()),
    }
    // The database is read once, for all country sets.
    let mut db: Option<Result<(String, Vec<u8>), String>> = None;
    for (t, span) in tables {
        let before = cx.problems.len();
        let line = cx.line_of(span.clone());
        let kspan = |k: &str| -> Option<Range<usize>> {
            t.get_key_value(k).and_then(|(key, item)| key.span().or_else(|| item_span(item))).or(span.clone())
        };
        let field = |k: &str| Some(format!("set.{k}"));
        for (k, _) in t.iter() {
            if !SET_KEYS.contains(&k) {
                cx.push(kspan(k), None, field(k).as_deref(), suggest(k, &SET_KEYS));
            }
        }
        let name = match t.get("name").map(|i| (i.as_str(), i)) {
            None => {
                cx.push(span.clone(), None, Some("set.name"), "missing: every set needs a name (rules refer to it as @name)".into());
                continue;
            }
            Some((Some(n), _)) if valid_name(n) => n.to_string(),
            Some((_, item)) => {
                cx.push(
                    kspan("name"),
                    None,
                    Some("set.name"),
                    format!(
                        "must be a string of letters, digits, '_', '-' or '.' (at most {} bytes), not {}",
                        super::MAX_NAME_LEN,
                        show(item)
                    ),
                );
                continue;
            }
        };
        let at = |m: String| format!("set '{name}': {m}");
        if table.names.contains_key(&name) {
            cx.push(kspan("name"), None, Some("set.name"), at("defined twice; set names must be unique".into()));
            continue;
        }
        table.names.insert(name.clone(), None);
        let source = match (t.get("file"), t.get("country")) {
            (Some(_), Some(_)) => {
                cx.push(
                    kspan("country"),
                    None,
                    Some("set.country"),
                    at("has both 'file' and 'country'; a set takes its entries from one".into()),
                );
                continue;
            }
            (None, None) => {
                cx.push(span.clone(), None, Some("set.file"), at("needs 'file' (a list of addresses) or 'country' (ISO codes)".into()));
                continue;
            }
            (Some(f), None) => match f.as_str() {
                Some(p) if !p.trim().is_empty() => Err(p.to_string()),
                _ => {
                    cx.push(kspan("file"), None, Some("set.file"), at(format!("must be a file name, not {}", show(f))));
                    continue;
                }
            },
            (None, Some(c)) => match country_codes(c) {
                Ok(codes) => Ok(codes),
                Err(m) => {
                    cx.push(kspan("country"), None, Some("set.country"), at(m));
                    continue;
                }
            },
        };
        let entries = match source {
            Err(path) => match loader.set_file(&path) {
                Err(m) => {
                    cx.push(kspan("file"), None, Some("set.file"), at(m));
                    None
                }
                Ok((shown, text)) => match sets::netset::parse(&text) {
                    Ok(e) => Some((SetSource::File(shown), e)),
                    Err(lines) => {
                        for (l, m) in lines {
                            cx.problems.push(super::Problem { file: shown.clone(), line: l, rule: None, field: None, message: at(m) });
                        }
                        None
                    }
                },
            },
            Ok(codes) => {
                let Some(path) = &database else {
                    cx.push(
                        kspan("country"),
                        None,
                        Some("set.country"),
                        at("needs a GeoIP database: add [geoip] database = \"/path/to/GeoLite2-Country.mmdb\"".into()),
                    );
                    continue;
                };
                let db = db.get_or_insert_with(|| loader.database(path));
                match db {
                    Err(m) => {
                        cx.push(kspan("country"), None, Some("set.country"), at(m.clone()));
                        None
                    }
                    Ok((shown, bytes)) => match geoip::networks(bytes, &codes) {
                        Ok(e) => Some((SetSource::Country { codes, database: shown.clone() }, e)),
                        Err(m) => {
                            cx.push(kspan("country"), None, Some("set.country"), at(format!("{shown}: {m}")));
                            None
                        }
                    },
                }
            }
        };
        let Some((source, entries)) = entries else { continue };
        if cx.problems.len() != before {
            continue;
        }
        let read = entries.len();
        let (entries, origins) = sets::merge(entries);
        table.names.insert(name.clone(), Some(table.sets.len()));
        table.sets.push(Set { name, line, source, entries, origins, read });
    }
    table
}

/// `[geoip] database = PATH`; None when absent or invalid (reported).
fn parse_geoip(cx: &mut Ctx<'_>, root: &Table) -> Option<String> {
    let item = root.get("geoip")?;
    let Some(t) = item.as_table_like() else {
        cx.push(item_span(item), None, Some("geoip"), "must be a table: [geoip] database = \"...\"".into());
        return None;
    };
    for (k, v) in t.iter() {
        if !GEOIP_KEYS.contains(&k) {
            let span = t.key(k).and_then(Key::span).or_else(|| item_span(v));
            cx.push(span, None, Some(&format!("geoip.{k}")), suggest(k, &GEOIP_KEYS));
        }
    }
    match t.get("database") {
        Some(v) => match v.as_str() {
            Some(p) if !p.trim().is_empty() => Some(p.to_string()),
            _ => {
                cx.push(item_span(v), None, Some("geoip.database"), format!("must be the path of a MaxMind DB file, not {}", show(v)));
                None
            }
        },
        None => {
            cx.push(item_span(item), None, Some("geoip.database"), "missing: the path of a MaxMind DB file (.mmdb)".into());
            None
        }
    }
}

/// `country = "KP"` or `["KP", "IR"]`: ISO 3166-1 alpha-2 codes, upper-cased.
fn country_codes(item: &Item) -> Result<Vec<String>, String> {
    let values: Vec<&Value> = match item.as_value() {
        Some(Value::Array(a)) if a.is_empty() => return Err("an empty list has no country".into()),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => return Err(format!("must be a country code or a list of them, not {}", show(item))),
    };
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let Some(s) = v.as_str() else { return Err(format!("each country must be a code such as \"KP\", not {}", v.type_name())) };
        let code = s.trim().to_ascii_uppercase();
        if !geoip::is_country(&code) {
            return Err(format!("'{s}' is not an ISO 3166-1 alpha-2 country code (two letters, such as \"KP\" or \"IR\")"));
        }
        if !out.contains(&code) {
            out.push(code);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::{
        rules::{Families, parse_with},
        sets::InMemory,
    };

    fn files(list: &[(&str, &str)]) -> InMemory {
        InMemory(list.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect())
    }

    fn errors(text: &str, fs: &InMemory) -> Vec<String> {
        match parse_with("r.toml", text, fs) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn references_expand_and_keep_their_names() {
        let fs =
            files(&[("bl.netset", "# list\n192.0.2.0/24\n192.0.2.9\n2001:db8::/48 ; six\n"), ("more.txt", "198.51.100.7\n192.0.2.0/25\n")]);
        let rs = parse_with(
            "r.toml",
            "default_policy = \"allow\"\n[[set]]\nname = \"bl\"\nfile = \"bl.netset\"\n[[set]]\nname = \"more\"\nfile = \"more.txt\"\n\
             [[rule]]\nname = \"a\"\naction = \"deny\"\ndst = [\"203.0.113.0/24\", \"@bl\", \"@more\", \"192.0.2.0/24\"]\n\
             [[rule]]\nname = \"b\"\naction = \"deny\"\nsrc = \"@more\"\n",
            &fs,
        )
        .unwrap();
        assert_eq!(rs.sets.len(), 2);
        assert_eq!((rs.sets[0].entries.len(), rs.sets[0].read), (2, 3));
        let a = &rs.rules[0];
        let dst: Vec<String> = a.dst.as_ref().unwrap().iter().map(|n| n.to_string()).collect();
        // Own CIDRs first, then the sets' entries merged (192.0.2.0/25 inside the
        // /24; the /24 itself equal to an own CIDR).
        assert_eq!(dst, vec!["203.0.113.0/24", "192.0.2.0/24", "198.51.100.7/32", "2001:db8::/48"]);
        assert_eq!(a.sets.dst_own, 2);
        assert_eq!(a.summary(), "all any -> 203.0.113.0/24,192.0.2.0/24,@bl,@more");
        assert_eq!(a.families, Families::BOTH);
        let b = &rs.rules[1];
        assert_eq!(b.summary(), "all @more -> any");
        assert_eq!(b.families, Families { v4: true, v6: false });
    }

    #[test]
    fn a_set_of_both_families_serves_a_rule_of_one() {
        let fs = files(&[("m.txt", "192.0.2.1\n2001:db8::1\n")]);
        let rs = parse_with(
            "r.toml",
            "default_policy = \"allow\"\n[[set]]\nname = \"m\"\nfile = \"m.txt\"\n[[rule]]\nsrc = \"198.51.100.0/24\"\ndst = \"@m\"\n",
            &fs,
        )
        .unwrap();
        assert_eq!(rs.rules[0].families, Families { v4: true, v6: false });
        // An empty set: the rule matches nothing (lint says so), not an error.
        let fs = files(&[("e.txt", "# nothing yet\n")]);
        let rs = parse_with("r.toml", "default_policy = \"allow\"\n[[set]]\nname = \"e\"\nfile = \"e.txt\"\n[[rule]]\ndst = \"@e\"\n", &fs)
            .unwrap();
        assert_eq!(rs.rules[0].families, Families::default());
    }

    #[test]
    fn bad_sets_are_errors_naming_file_line_and_field() {
        let fs = files(&[("bl.netset", "192.0.2.0/24\n192.0.2.300\n"), ("ok.txt", "192.0.2.1\n")]);
        let e = errors(
            "default_policy = \"allow\"\n[[set]]\nname = \"bl\"\nfile = \"bl.netset\"\n[[rule]]\nname = \"a\"\ndst = \"@bl\"\n[[rule]]\nname = \"b\"\ndst = \"@nope\"\n",
            &fs,
        );
        assert_eq!(
            e,
            vec![
                "r.toml:10: rule 'b', field 'dst': '@nope' names no set (sets: @bl)",
                "bl.netset:2: set 'bl': '192.0.2.300' is not an IPv4 or IPv6 address or CIDR",
            ]
        );
        let e = errors(
            "default_policy = \"allow\"\n[[set]]\nname = \"x\"\nfile = \"ok.txt\"\n[[set]]\nname = \"x\"\nfile = \"ok.txt\"\n\
             [[set]]\nname = \"both\"\nfile = \"ok.txt\"\ncountry = \"KP\"\n[[set]]\nname = \"none\"\n\
             [[set]]\nname = \"missing\"\nfile = \"gone.txt\"\n[[set]]\nname = \"geo\"\ncountry = [\"KP\", \"XX\"]\n\
             [[set]]\nname = \"nogeo\"\ncountry = \"KP\"\n[[set]]\nname = \"bad name!\"\nfile = \"ok.txt\"\n[[set]]\nname = \"k\"\nfile = \"ok.txt\"\nfiles = 1\n\
             [[rule]]\ndst = \"@missing\"\n",
            &fs,
        );
        let want = [
            "r.toml:6: field 'set.name': set 'x': defined twice; set names must be unique",
            "r.toml:11: field 'set.country': set 'both': has both 'file' and 'country'",
            "r.toml:12: field 'set.file': set 'none': needs 'file' (a list of addresses) or 'country' (ISO codes)",
            "r.toml:16: field 'set.file': set 'missing': read set file gone.txt: No such file or directory",
            "r.toml:19: field 'set.country': set 'geo': 'XX' is not an ISO 3166-1 alpha-2 country code",
            "r.toml:22: field 'set.country': set 'nogeo': needs a GeoIP database: add [geoip] database",
            "r.toml:24: field 'set.name': must be a string of letters, digits",
            "r.toml:29: field 'set.files': unknown key 'files' (did you mean 'file'?)",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got}\n  does not start with\n{want}");
        }
        // The plain parser reads no files.
        let e = crate::rules::parse("r.toml", "default_policy = \"allow\"\n[[set]]\nname = \"x\"\nfile = \"ok.txt\"\n").unwrap_err();
        assert!(e.to_string().contains("set files are not read here"), "{e}");
    }

    #[test]
    fn a_database_that_is_not_one_is_a_clear_error() {
        let fs = files(&[("geo.mmdb", "not a database")]);
        let e = errors(
            "default_policy = \"allow\"\n[geoip]\ndatabase = \"geo.mmdb\"\n[[set]]\nname = \"s\"\ncountry = [\"kp\"]\n[[rule]]\ndst = \"@s\"\n",
            &fs,
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("r.toml:6: field 'set.country': set 's': geo.mmdb: not a MaxMind DB file"), "{e:?}");
        let e = errors("default_policy = \"allow\"\n[geoip]\npath = \"x\"\n", &fs);
        assert!(e[0].starts_with("r.toml:2: field 'geoip.database': missing"), "{e:?}");
        assert!(e[1].starts_with("r.toml:3: field 'geoip.path': unknown key 'path'"), "{e:?}");
    }
}
