//! Stateful mode in the rule file: `stateful = true` at the top and the optional
//! `[state]` table (idle timeouts in seconds, table size). Shared by the
//! one-piece and the chunked parse.
//!
//! ```toml
//! stateful = true
//! [state]
//! tcp_established = 432000   # seconds idle before an established TCP connection is forgotten
//! tcp_closing = 120          # after FIN both ways, RST, or while unanswered
//! udp = 120
//! icmp = 30
//! max_flows = 65536          # connections tracked per address family
//! ```

use toml_edit::Table;

use super::{
    parse::Ctx,
    toml_diag::{item_span, suggest},
};
use egress_common::{
    DEFAULT_ICMP_S, DEFAULT_MAX_FLOWS, DEFAULT_TCP_CLOSING_S, DEFAULT_TCP_ESTABLISHED_S, DEFAULT_UDP_S, MAX_MAX_FLOWS, MAX_TIMEOUT_S,
    MIN_MAX_FLOWS,
};

const STATE_KEYS: [&str; 5] = ["tcp_established", "tcp_closing", "udp", "icmp", "max_flows"];

/// Stateful mode's settings (present only when `stateful = true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateConfig {
    /// Idle timeouts, seconds.
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub udp: u64,
    pub icmp: u64,
    /// Connection-table entries per address family.
    pub max_flows: u32,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            tcp_established: DEFAULT_TCP_ESTABLISHED_S,
            tcp_closing: DEFAULT_TCP_CLOSING_S,
            udp: DEFAULT_UDP_S,
            icmp: DEFAULT_ICMP_S,
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

/// Reads `stateful` and `[state]` from the top-level table. `None` when the file is
/// stateless; problems go to `cx`.
pub(super) fn parse_state(cx: &mut Ctx<'_>, root: &Table) -> Option<StateConfig> {
    // (stateful, its value is valid)
    let (stateful, valid) = match root.get("stateful") {
        None => (false, true),
        Some(item) => match item.as_bool() {
            Some(b) => (b, true),
            None => {
                cx.push(item_span(item), None, Some("stateful"), "must be true or false".into());
                (false, false)
            }
        },
    };
    let Some(item) = root.get("state") else {
        return stateful.then(StateConfig::default);
    };
    let Some(t) = item.as_table_like() else {
        cx.push(item_span(item), None, Some("state"), "must be a table: [state]".into());
        return None;
    };
    if !stateful && valid {
        cx.push(item_span(item), None, Some("state"), "[state] has no effect without stateful = true at the top of the file".into());
    }
    let mut c = StateConfig::default();
    for (k, v) in t.iter() {
        let field = format!("state.{k}");
        let span = item_span(v);
        if !STATE_KEYS.contains(&k) {
            cx.push(span, None, Some(&field), suggest(k, &STATE_KEYS));
            continue;
        }
        let Some(n) = v.as_integer() else {
            cx.push(span, None, Some(&field), "must be an integer".into());
            continue;
        };
        if k == "max_flows" {
            if (i64::from(MIN_MAX_FLOWS)..=i64::from(MAX_MAX_FLOWS)).contains(&n) {
                c.max_flows = n as u32;
            } else {
                cx.push(
                    span,
                    None,
                    Some(&field),
                    format!("{n} is out of range: connections per address family, {MIN_MAX_FLOWS} to {MAX_MAX_FLOWS}"),
                );
            }
            continue;
        }
        if !(1..=MAX_TIMEOUT_S as i64).contains(&n) {
            cx.push(span, None, Some(&field), format!("{n} is out of range: an idle timeout in seconds, 1 to {MAX_TIMEOUT_S} (30 days)"));
            continue;
        }
        let n = n as u64;
        match k {
            "tcp_established" => c.tcp_established = n,
            "tcp_closing" => c.tcp_closing = n,
            "udp" => c.udp = n,
            _ => c.icmp = n,
        }
    }
    stateful.then_some(c)
}

/// Whether an item is one of the stateful-mode keys (for the chunked parse's preamble).
pub(super) fn is_state_key(k: &str) -> bool {
    k == "stateful" || k == "state"
}
