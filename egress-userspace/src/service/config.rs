//! The `egress run` config file (TOML, a contract; unknown keys are errors):
//!
//! ```toml
//! [[interface]]
//! name = "eth1"                      # required
//! rules = "/etc/egress/eth1.toml"    # required: a rule file
//! flow_cache = 65536                 # optional, as `apply --flow-cache`
//! hook = "tc-egress"                 # optional: tc-egress (default), tc-ingress, xdp
//! debug = false                      # optional, as `apply --debug` (logged by the service)
//! ```
//!
//! One interface may appear more than once with different hooks.
//!
//! ```toml
//! [[cgroup]]
//! path = "system.slice/nginx.service"  # required: a cgroup v2 directory, absolute
//!                                      # or below the cgroup v2 mount
//! rules = "/etc/egress/nginx.toml"     # required: a rule file
//! flow_cache = 65536                   # optional, as `apply --flow-cache`
//! ```
//!
//! A cgroup entry is managed like an interface (`IfaceConfig` with hook
//! [`Hook::Cgroup`] and the path as its name).
//!
//! Pure: text in, validated config or every problem (file:line, interface, field) out.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use toml_edit::{ImDocument, Item, Table};

use crate::{
    hook::Hook,
    rules::toml_diag::{item_span, line_starts, suggest},
};

const TOP_KEYS: [&str; 2] = ["interface", "cgroup"];
const CGROUP_KEYS: [&str; 4] = ["path", "rules", "flow_cache", "debug"];
const IFACE_KEYS: [&str; 5] = ["name", "rules", "flow_cache", "hook", "debug"];

/// One `[[interface]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceConfig {
    pub name: String,
    /// The rule file; relative paths are taken from the config file's folder.
    pub rules: PathBuf,
    pub flow_cache: u32,
    pub hook: Hook,
    /// Debug mode (as `apply --debug`): the service logs why the program drops
    /// packets it cannot parse.
    pub debug: bool,
    /// Line of the `[[interface]]` header.
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<IfaceConfig>,
}

impl Config {
    /// Reads and validates a config file; the error lists every problem, one a line.
    pub fn load(path: &Path) -> Result<Config, String> {
        let shown = path.display().to_string();
        let text = crate::input::read_text(path, "config file")?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&shown, &text, &base)
    }

    /// Parses config text; `file` names it in messages, `base` resolves relative rule paths.
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, String> {
        let starts = line_starts(text);
        let line_of = |span: Option<std::ops::Range<usize>>| span.map(|r| starts.partition_point(|&s| s <= r.start).max(1)).unwrap_or(1);
        let mut problems: Vec<String> = Vec::new();
        // ImDocument keeps the spans that give line numbers.
        let parsed = match ImDocument::parse(text) {
            Ok(d) => d,
            Err(e) => {
                let line = line_of(e.span());
                return Err(format!("{file}: 1 problem found\n  {file}:{line}: {}", e.message().trim()));
            }
        };
        let root: &Table = parsed.as_table();
        for (k, item) in root.iter() {
            if !TOP_KEYS.contains(&k) {
                let span = root.key(k).and_then(|k| k.span()).or_else(|| item_span(item));
                problems.push(format!("{file}:{}: {}", line_of(span), suggest(k, &TOP_KEYS)));
            }
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        match root.get("interface") {
            None if root.get("cgroup").is_some() => {}
            None => problems.push(format!("{file}:1: no [[interface]] or [[cgroup]] entries: nothing to run")),
            Some(Item::ArrayOfTables(arr)) => {
                for (i, t) in arr.iter().enumerate() {
                    let line = line_of(t.span());
                    let label = t.get("name").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| format!("#{}", i + 1));
                    let mut bad = |span: Option<std::ops::Range<usize>>, field: &str, msg: String| {
                        problems.push(format!(
                            "{file}:{}: interface '{label}', field '{field}': {msg}",
                            span.map(|s| line_of(Some(s))).unwrap_or(line)
                        ));
                    };
                    for (k, item) in t.iter() {
                        if !IFACE_KEYS.contains(&k) {
                            bad(t.key(k).and_then(|k| k.span()).or_else(|| item_span(item)), k, suggest(k, &IFACE_KEYS));
                        }
                    }
                    let name = match t.get("name") {
                        Some(Item::Value(v)) => match v.as_str() {
                            Some(s) if !s.is_empty() && s.len() < 16 && !s.contains(['/', ' ', '\0']) => Some(s.to_string()),
                            Some(s) => {
                                bad(v.span(), "name", format!("'{s}' is not an interface name (1-15 bytes, no '/' or spaces)"));
                                None
                            }
                            None => {
                                bad(v.span(), "name", "must be a string".into());
                                None
                            }
                        },
                        _ => {
                            bad(None, "name", "missing: the interface to filter, e.g. name = \"eth1\"".into());
                            None
                        }
                    };
                    let rules = match t.get("rules") {
                        Some(Item::Value(v)) => match v.as_str() {
                            Some(s) if !s.is_empty() => Some(base.join(s)),
                            _ => {
                                bad(v.span(), "rules", "must be the path of a rule file (a string)".into());
                                None
                            }
                        },
                        _ => {
                            bad(None, "rules", "missing: the rule file for this interface, e.g. rules = \"/etc/egress/eth1.toml\"".into());
                            None
                        }
                    };
                    let flow_cache = flow_cache(t.get("flow_cache")).map_err(|(span, m)| bad(span, "flow_cache", m)).ok();
                    let hook = match t.get("hook") {
                        None => Some(Hook::TcEgress),
                        Some(item) => match item.as_str().map(str::parse::<Hook>) {
                            Some(Ok(h)) => Some(h),
                            Some(Err(e)) => {
                                bad(item_span(item), "hook", e);
                                None
                            }
                            None => {
                                bad(item_span(item), "hook", "must be a string: \"tc-egress\", \"tc-ingress\" or \"xdp\"".into());
                                None
                            }
                        },
                    };
                    let debug = debug_flag(t.get("debug")).map_err(|(span, m)| bad(span, "debug", m)).ok();
                    if let (Some(n), Some(h)) = (&name, hook)
                        && !seen.insert((n.clone(), h))
                    {
                        bad(t.get("name").and_then(item_span), "name", format!("interface '{n}' is listed twice with hook {h}"));
                    }
                    if let (Some(name), Some(rules), Some(flow_cache), Some(hook), Some(debug)) = (name, rules, flow_cache, hook, debug) {
                        out.push(IfaceConfig { name, rules, flow_cache, hook, debug, line });
                    }
                }
            }
            Some(other) => problems.push(format!("{file}:{}: 'interface' must be [[interface]] tables", line_of(item_span(other)))),
        }
        match root.get("cgroup") {
            None => {}
            Some(Item::ArrayOfTables(arr)) => {
                for (i, t) in arr.iter().enumerate() {
                    let line = line_of(t.span());
                    let label = t.get("path").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| format!("#{}", i + 1));
                    let mut bad = |span: Option<std::ops::Range<usize>>, field: &str, msg: String| {
                        problems.push(format!(
                            "{file}:{}: cgroup '{label}', field '{field}': {msg}",
                            span.map(|s| line_of(Some(s))).unwrap_or(line)
                        ));
                    };
                    for (k, item) in t.iter() {
                        if !CGROUP_KEYS.contains(&k) {
                            bad(t.key(k).and_then(|k| k.span()).or_else(|| item_span(item)), k, suggest(k, &CGROUP_KEYS));
                        }
                    }
                    let path = match t.get("path").map(|i| (i.as_str(), item_span(i))) {
                        Some((Some(s), _)) if !s.is_empty() && !s.contains('\0') => Some(s.trim_end_matches('/').to_string()),
                        Some((_, span)) => {
                            bad(span, "path", "must be a cgroup v2 directory (a string), e.g. \"system.slice/nginx.service\"".into());
                            None
                        }
                        None => {
                            bad(None, "path", "missing: the cgroup, e.g. path = \"/sys/fs/cgroup/system.slice/nginx.service\"".into());
                            None
                        }
                    };
                    let rules = match t.get("rules").map(|i| (i.as_str(), item_span(i))) {
                        Some((Some(s), _)) if !s.is_empty() => Some(base.join(s)),
                        Some((_, span)) => {
                            bad(span, "rules", "must be the path of a rule file (a string)".into());
                            None
                        }
                        None => {
                            bad(None, "rules", "missing: the rule file for this cgroup, e.g. rules = \"/etc/egress/nginx.toml\"".into());
                            None
                        }
                    };
                    let flow_cache = flow_cache(t.get("flow_cache")).map_err(|(span, m)| bad(span, "flow_cache", m)).ok();
                    let debug = debug_flag(t.get("debug")).map_err(|(span, m)| bad(span, "debug", m)).ok();
                    if let Some(p) = &path
                        && !seen.insert((p.clone(), Hook::Cgroup))
                    {
                        bad(t.get("path").and_then(item_span), "path", format!("cgroup '{p}' is listed twice"));
                    }
                    if let (Some(name), Some(rules), Some(flow_cache), Some(debug)) = (path, rules, flow_cache, debug) {
                        out.push(IfaceConfig { name, rules, flow_cache, hook: Hook::Cgroup, debug, line });
                    }
                }
            }
            Some(other) => problems.push(format!("{file}:{}: 'cgroup' must be [[cgroup]] tables", line_of(item_span(other)))),
        }
        if problems.is_empty() {
            Ok(Config { interfaces: out })
        } else {
            let n = problems.len();
            Err(format!("{file}: {n} problem{} found\n  {}", if n == 1 { "" } else { "s" }, problems.join("\n  ")))
        }
    }
}

/// An entry's `debug` (false when absent), or where and why it is wrong.
fn debug_flag(item: Option<&Item>) -> Result<bool, (Option<std::ops::Range<usize>>, String)> {
    match item {
        None => Ok(false),
        Some(item) => item.as_bool().ok_or_else(|| (item_span(item), "must be true or false".into())),
    }
}

/// An entry's `flow_cache` (default when absent), or where and why it is wrong.
fn flow_cache(item: Option<&Item>) -> Result<u32, (Option<std::ops::Range<usize>>, String)> {
    let Some(item) = item else { return Ok(egress_common::FLOW_CACHE_ENTRIES) };
    match item.as_integer() {
        Some(n) if (0..=i64::from(egress_common::MAX_FLOW_CACHE_ENTRIES)).contains(&n) => Ok(n as u32),
        _ => Err((item_span(item), format!("must be an integer from 0 (off) to {}", egress_common::MAX_FLOW_CACHE_ENTRIES))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_interfaces_and_resolves_relative_paths() {
        let c = Config::parse(
            "c.toml",
            "[[interface]]\nname = \"eth1\"\nrules = \"eth1.toml\"\n\n[[interface]]\nname = \"eth2\"\nrules = \"/abs/r.toml\"\nflow_cache = 0\n",
            Path::new("/etc/egress"),
        )
        .unwrap();
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[0].rules, Path::new("/etc/egress/eth1.toml"));
        assert_eq!(c.interfaces[0].flow_cache, egress_common::FLOW_CACHE_ENTRIES);
        assert_eq!(c.interfaces[1].rules, Path::new("/abs/r.toml"));
        assert_eq!((c.interfaces[1].flow_cache, c.interfaces[1].line), (0, 5));
        assert_eq!(c.interfaces[1].hook, Hook::TcEgress);
    }

    #[test]
    fn one_interface_on_several_hooks() {
        let c = Config::parse(
            "c.toml",
            "[[interface]]\nname = \"eth1\"\nrules = \"a.toml\"\n[[interface]]\nname = \"eth1\"\nrules = \"b.toml\"\nhook = \"xdp\"\n",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.interfaces.iter().map(|i| i.hook).collect::<Vec<_>>(), vec![Hook::TcEgress, Hook::Xdp]);
        let e = Config::parse("c.toml", "[[interface]]\nname = \"eth1\"\nrules = \"a\"\nhook = \"egress\"\n", Path::new("/")).unwrap_err();
        assert!(e.contains("c.toml:4: interface 'eth1', field 'hook': unknown hook 'egress'"), "{e}");
    }

    #[test]
    fn cgroups_beside_interfaces() {
        let c = Config::parse(
            "c.toml",
            "[[cgroup]]\npath = \"system.slice/nginx.service/\"\nrules = \"nginx.toml\"\n[[interface]]\nname = \"eth1\"\nrules = \"a.toml\"\n",
            Path::new("/etc/egress"),
        )
        .unwrap();
        let cg = c.interfaces.iter().find(|i| i.hook == Hook::Cgroup).expect("the cgroup");
        assert_eq!((cg.name.as_str(), cg.rules.as_path(), cg.line), ("system.slice/nginx.service", Path::new("/etc/egress/nginx.toml"), 1));
        let e = Config::parse("c.toml", "[[cgroup]]\npath = \"a\"\nrule = \"x\"\n", Path::new("/")).unwrap_err();
        assert!(e.contains("c.toml:3: cgroup 'a', field 'rule': unknown key 'rule' (did you mean 'rules'?)"), "{e}");
        assert!(e.contains("c.toml:1: cgroup 'a', field 'rules': missing"), "{e}");
        let e =
            Config::parse("c.toml", "[[cgroup]]\npath = \"a\"\nrules = \"x\"\n[[cgroup]]\npath = \"a/\"\nrules = \"y\"\n", Path::new("/"))
                .unwrap_err();
        assert!(e.contains("c.toml:5: cgroup 'a/', field 'path': cgroup 'a' is listed twice"), "{e}");
    }

    #[test]
    fn debug_mode_per_interface() {
        let c = Config::parse("c.toml", "[[interface]]\nname = \"eth1\"\nrules = \"a\"\ndebug = true\n", Path::new("/")).unwrap();
        assert!(c.interfaces[0].debug);
        let c = Config::parse("c.toml", "[[interface]]\nname = \"eth1\"\nrules = \"a\"\n", Path::new("/")).unwrap();
        assert!(!c.interfaces[0].debug);
        let e = Config::parse("c.toml", "[[interface]]\nname = \"eth1\"\nrules = \"a\"\ndebug = \"yes\"\n", Path::new("/")).unwrap_err();
        assert!(e.contains("c.toml:4: interface 'eth1', field 'debug': must be true or false"), "{e}");
        // And per cgroup.
        let c = Config::parse("c.toml", "[[cgroup]]\npath = \"web\"\nrules = \"a\"\ndebug = true\n", Path::new("/")).unwrap();
        assert!(c.interfaces[0].debug && c.interfaces[0].hook == Hook::Cgroup);
        let e = Config::parse("c.toml", "[[cgroup]]\npath = \"web\"\nrules = \"a\"\ndebug = 1\n", Path::new("/")).unwrap_err();
        assert!(e.contains("c.toml:4: cgroup 'web', field 'debug': must be true or false"), "{e}");
    }

    #[test]
    fn reports_every_problem_with_line_and_field() {
        let e = Config::parse(
            "c.toml",
            "verbose = true\n[[interface]]\nname = \"eth1\"\nrule = \"x\"\n[[interface]]\nname = \"eth1\"\nrules = \"y\"\nflow_cache = -1\n",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.starts_with("c.toml: 5 problems found"), "{e}");
        assert!(e.contains("c.toml:1: unknown key 'verbose'"), "{e}");
        assert!(e.contains("c.toml:4: interface 'eth1', field 'rule': unknown key 'rule' (did you mean 'rules'?)"), "{e}");
        assert!(e.contains("c.toml:2: interface 'eth1', field 'rules': missing"), "{e}");
        assert!(e.contains("c.toml:8: interface 'eth1', field 'flow_cache': must be an integer"), "{e}");
        assert!(e.contains("c.toml:6: interface 'eth1', field 'name': interface 'eth1' is listed twice with hook tc-egress"), "{e}");
        assert!(Config::parse("c.toml", "", Path::new("/")).unwrap_err().contains("no [[interface]] or [[cgroup]]"));
        assert!(Config::parse("c.toml", "[[interface]\n", Path::new("/")).unwrap_err().contains("c.toml:1:"));
    }
}
