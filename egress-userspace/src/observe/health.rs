//! The probes beside the metrics (`egress run --metrics`): `/healthz` says the
//! service answers; `/readyz` says whether every configured interface and
//! cgroup is applied with a healthy link, and for each what is enforced and
//! whether its rule file, as it is now, is.

use std::sync::Arc;

use serde_json::{Value, json};

use super::metrics::Shared;
use crate::dataplane::{self, LinkHealth};

/// Ready (every entry applied, link attached) and the body saying so.
///
/// An invalid rule file does not make the service unready: the previous rules
/// stay enforced, and the entry says `"file_applied": false` with the error.
pub fn readiness(shared: &Arc<Shared>) -> (bool, Value) {
    let tracked = shared.tracked.lock().map(|t| t.clone()).unwrap_or_default();
    let mut ready = true;
    let mut entries = Vec::new();
    for t in &tracked {
        let live = t.target.as_ref().and_then(|target| dataplane::status_of(target).ok().flatten());
        let link = match &live {
            None => "not applied",
            Some((_, h)) => h.as_str(),
        };
        let ok = matches!(live, Some((_, LinkHealth::Attached)));
        ready &= ok;
        let place = if t.hook == "cgroup" { "cgroup" } else { "iface" };
        let mut e = json!({
            place: t.iface, "hook": t.hook, "ready": ok, "link": link, "rules_file": t.rules_file, "file_applied": t.file_applied,
            "generation": live.as_ref().map(|(s, _)| s.generation), "digest": live.as_ref().map(|(s, _)| s.digest.clone()),
        });
        if let Some(err) = &t.error {
            e["error"] = json!(err);
        }
        entries.push(e);
    }
    (ready, json!({"ready": ready, "attachments": entries}))
}
