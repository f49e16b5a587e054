//! Deny events in the rule file: the optional `[events]` table, the per-rule
//! rate limit of the kernel's token bucket. Shared by the one-piece and the
//! chunked parse.
//!
//! ```toml
//! [events]
//! rate = 10     # events per second per rule (0: no events); default 10
//! burst = 20    # events a rule may send at once after a quiet spell; default 20
//! ```

use toml_edit::Table;

use super::{
    parse::Ctx,
    toml_diag::{item_span, suggest},
};
use egress_common::{DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, MAX_EVENT_BURST, MAX_EVENT_RATE};

const EVENTS_KEYS: [&str; 2] = ["rate", "burst"];

/// The deny events' rate limit, per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventsConfig {
    /// Events per second per rule; 0 turns events off.
    pub rate: u32,
    /// Events a rule may send back to back.
    pub burst: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { rate: DEFAULT_EVENT_RATE, burst: DEFAULT_EVENT_BURST }
    }
}

/// Reads `[events]` from the top-level table (defaults when absent); problems go to `cx`.
pub(super) fn parse_events(cx: &mut Ctx<'_>, root: &Table) -> EventsConfig {
    let mut c = EventsConfig::default();
    let Some(item) = root.get("events") else { return c };
    let Some(t) = item.as_table_like() else {
        cx.push(item_span(item), None, Some("events"), "must be a table: [events]".into());
        return c;
    };
    for (k, v) in t.iter() {
        let field = format!("events.{k}");
        let span = item_span(v);
        if !EVENTS_KEYS.contains(&k) {
            cx.push(span, None, Some(&field), suggest(k, &EVENTS_KEYS));
            continue;
        }
        let Some(n) = v.as_integer() else {
            cx.push(span, None, Some(&field), "must be an integer".into());
            continue;
        };
        let (lo, hi, what) =
            if k == "rate" { (0, MAX_EVENT_RATE, "events per second per rule") } else { (1, MAX_EVENT_BURST, "events at once") };
        if !(i64::from(lo)..=i64::from(hi)).contains(&n) {
            cx.push(span, None, Some(&field), format!("{n} is out of range: {what}, {lo} to {hi}"));
            continue;
        }
        if k == "rate" { c.rate = n as u32 } else { c.burst = n as u32 }
    }
    c
}
