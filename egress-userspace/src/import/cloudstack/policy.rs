//! The network's default egress policy: from `--default-policy`, or from a
//! `listNetworkOfferings` / `listNetworks` response (`egressdefaultpolicy`).

use serde_json::Value;

use super::{ImportError, Options, text_of};
use crate::rules::Action;

pub(super) fn default_policy(o: &Options) -> Result<(Action, String), ImportError> {
    if let Some(p) = o.default_policy {
        return Ok((p, "--default-policy".into()));
    }
    let Some((file, text)) = &o.offering else {
        return Err(ImportError::Input(
            "the network's default egress policy is needed: give --default-policy allow|deny, or --offering FILE (a listNetworkOfferings or listNetworks response)".into(),
        ));
    };
    let doc: Value = serde_json::from_str(text).map_err(|e| ImportError::Input(format!("{file}: not valid JSON: {e}")))?;
    let bad = |m: String| ImportError::Input(format!("{file}: {m}"));
    // listNetworks (or cloudmonkey's {"network": [...]}) or listNetworkOfferings.
    let (what, entries) =
        [("listnetworksresponse", "network", "networks"), ("listnetworkofferingsresponse", "networkoffering", "network offerings")]
            .iter()
            .find_map(|(resp, key, what)| {
                let inner = doc.get(resp).unwrap_or(&doc);
                inner.get(key).and_then(Value::as_array).map(|a| (*what, a.clone()))
            })
            .or_else(|| doc.as_array().map(|a| ("entries", a.clone())))
            .ok_or_else(
                || bad("not a listNetworkOfferings or listNetworks response (no \"networkoffering\" or \"network\" list)".into()),
            )?;
    let chosen: Vec<&Value> = match &o.network {
        Some(id) if what == "networks" => {
            entries.iter().filter(|e| e.get("id").and_then(text_of).as_deref() == Some(id.as_str())).collect()
        }
        _ => entries.iter().collect(),
    };
    let entry = match chosen.as_slice() {
        [one] => *one,
        [] => {
            return Err(bad(format!(
                "no {what} to take the default egress policy from{}",
                o.network.as_ref().map(|n| format!(" (network {n})")).unwrap_or_default()
            )));
        }
        many => {
            return Err(bad(format!(
                "{} {what}: say which with --network ID (a listNetworks response), or give --default-policy",
                many.len()
            )));
        }
    };
    let name = entry.get("name").and_then(text_of).or_else(|| entry.get("id").and_then(text_of)).unwrap_or_default();
    let allow = match entry.get("egressdefaultpolicy") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => return Err(bad(format!("egressdefaultpolicy of '{name}' must be true or false, not {other}"))),
        None => return Err(bad(format!("'{name}' has no egressdefaultpolicy"))),
    };
    let policy = if allow { Action::Allow } else { Action::Deny };
    Ok((policy, format!("{file} ('{name}': egressdefaultpolicy = {allow})")))
}
