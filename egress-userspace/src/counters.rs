//! Rendering of `egress counters` and `egress status`: tables for people, JSON for
//! programs. Pure: takes what `dataplane` read.

use egress_common::{DEFAULT_COUNTER_SLOT, STAT_NAMES};
use serde_json::{Value, json};

use crate::dataplane::{LinkHealth, Readout, State, pin_dir};

/// An action as the tables show it: "deny (audit)" for a deny in audit mode.
fn action_label(action: &str, audit: bool) -> String {
    if audit { format!("{action} (audit)") } else { action.to_string() }
}

/// The latest hit of a row: RFC 3339, or null when it never matched.
fn last_hit_json(r: &Readout, slot: usize) -> Value {
    match r.counters.get(slot).map(|c| c.last_hit) {
        Some(t) if t > 0 => json!(rfc3339(t)),
        _ => Value::Null,
    }
}

/// "12s ago", "3m ago", "5h ago", "2d ago", or "never".
pub fn ago(last_hit: u64, now: u64) -> String {
    if last_hit == 0 {
        return "never".into();
    }
    let s = now.saturating_sub(last_hit);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn last_hit_text(r: &Readout, slot: usize) -> String {
    ago(r.counters.get(slot).map(|c| c.last_hit).unwrap_or(0), crate::dataplane::now_unix())
}

/// A deny-events counter (`ES_*` slot).
fn ev(r: &Readout, slot: usize) -> u64 {
    r.events.get(slot).copied().unwrap_or(0)
}

fn counter(r: &Readout, slot: usize) -> (u64, u64) {
    r.counters.get(slot).map(|c| (c.packets, c.bytes)).unwrap_or((0, 0))
}

pub fn counters_json(r: &Readout) -> Value {
    let rules: Vec<Value> = r
        .state
        .rules
        .iter()
        .enumerate()
        .map(|(i, ri)| {
            let (packets, bytes) = counter(r, i + 1);
            json!({"name": ri.name, "action": ri.action, "audit": ri.audit, "packets": packets, "bytes": bytes, "match": ri.summary,
                   "since": rfc3339(ri.since), "last_hit": last_hit_json(r, i + 1)})
        })
        .collect();
    let (packets, bytes) = counter(r, DEFAULT_COUNTER_SLOT as usize);
    let stats: serde_json::Map<String, Value> =
        STAT_NAMES.iter().zip(r.stats.iter().chain(std::iter::repeat(&0))).map(|(n, v)| (n.to_string(), json!(v))).collect();
    let mut v = json!({
        "hook": r.state.hook,
        "mode": r.state.mode,
        "link": r.health.as_str(),
        "rules": rules,
        "default": {"action": r.state.default_action, "audit": r.state.default_audit, "packets": packets, "bytes": bytes, "since": rfc3339(r.state.default_since),
                    "last_hit": last_hit_json(r, DEFAULT_COUNTER_SLOT as usize)},
        "unclassified": stats,
        "generation": r.state.generation,
        "digest": r.state.digest,
        "stateful": r.state.stateful.is_some(),
        "state": state_json(r),
        "events": {"sent": ev(r, 0), "suppressed": ev(r, 1), "lost": ev(r, 2)},
    });
    if let Some(m) = v.as_object_mut() {
        m.extend(r.state.at_json());
        m.remove("ifindex");
    }
    // Rules by name: the DNS counters (the key only when the rules name domains).
    if let Some(d) = &r.dns {
        v["dns"] = crate::observe::dns::stats_json(d);
    }
    v
}

/// Stateful mode's part of `counters --json` (null when stateless).
fn state_json(r: &Readout) -> Value {
    use egress_common::{
        CS_ESTABLISHED_BYTES, CS_ESTABLISHED_PACKETS, CS_EXPIRED, CS_INSERT_FAILED, CS_INSERTED, CS_INSERTED_INBOUND, CS_RELATED_BYTES,
        CS_RELATED_PACKETS,
    };
    let (Some(c), Some(sc)) = (&r.conn, &r.state.stateful) else {
        return Value::Null;
    };
    json!({
        "established": {"packets": c.stat(CS_ESTABLISHED_PACKETS), "bytes": c.stat(CS_ESTABLISHED_BYTES)},
        "related": {"packets": c.stat(CS_RELATED_PACKETS), "bytes": c.stat(CS_RELATED_BYTES)},
        "flows": {
            "tracked": c.live, "entries": c.entries, "max_flows": sc.max_flows,
            "inserted": c.stat(CS_INSERTED), "inserted_inbound": c.stat(CS_INSERTED_INBOUND),
            "expired": c.stat(CS_EXPIRED), "evicted": c.evicted(), "table_full": c.evicted(),
            "insert_failed": c.stat(CS_INSERT_FAILED),
        },
        "timeouts": {"tcp_established": sc.tcp_established, "tcp_closing": sc.tcp_closing, "udp": sc.udp, "icmp": sc.icmp},
        "companion": r.state.companion,
    })
}

/// Human-readable byte count like iptables -v (K/M/G, powers of 1000... no: 1024).
fn human(n: u64) -> String {
    const U: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 10_000.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { n.to_string() } else { format!("{:.0}{}", v, U[i]) }
}

pub fn counters_table(r: &Readout) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "#".into(),
        "NAME".into(),
        "ACTION".into(),
        "PKTS".into(),
        "BYTES".into(),
        "LAST HIT".into(),
        "COUNTING SINCE (UTC)".into(),
        "MATCH".into(),
    ]];
    for (i, ri) in r.state.rules.iter().enumerate() {
        let (p, b) = counter(r, i + 1);
        rows.push([
            (i + 1).to_string(),
            ri.name.clone(),
            action_label(&ri.action, ri.audit),
            p.to_string(),
            human(b),
            last_hit_text(r, i + 1),
            utc(ri.since),
            ri.summary.clone(),
        ]);
    }
    let (p, b) = counter(r, DEFAULT_COUNTER_SLOT as usize);
    rows.push([
        "-".into(),
        "(default)".into(),
        action_label(&r.state.default_action, r.state.default_audit),
        p.to_string(),
        human(b),
        last_hit_text(r, DEFAULT_COUNTER_SLOT as usize),
        utc(r.state.default_since),
        "no rule matched".into(),
    ]);
    if let Some(c) = &r.conn {
        use egress_common::{CS_ESTABLISHED_BYTES, CS_ESTABLISHED_PACKETS, CS_RELATED_BYTES, CS_RELATED_PACKETS};
        rows.push([
            "-".into(),
            "(established)".into(),
            "allow".into(),
            (c.stat(CS_ESTABLISHED_PACKETS) + c.stat(CS_RELATED_PACKETS)).to_string(),
            human(c.stat(CS_ESTABLISHED_BYTES) + c.stat(CS_RELATED_BYTES)),
            "-".into(),
            "-".into(),
            "tracked connections and ICMP errors about them (stateful)".into(),
        ]);
    }
    let ns = if r.state.netns == "host" || r.state.is_cgroup() { String::new() } else { format!(" in netns {}", r.state.netns) };
    let at = if r.state.is_cgroup() {
        format!("{} (", r.state.place())
    } else {
        format!("{}{ns} ({} hook ({}), ", r.state.iface, r.state.hook, r.state.mode)
    };
    let mut out = format!("egress on {at}generation {}, {} rules from {})\n", r.state.generation, r.state.rules.len(), r.state.rules_file);
    if r.health != LinkHealth::Attached {
        out.push_str(&format!(
            "warning: the link is {}: the interface or its namespace is gone and nothing is filtered (`egress status --prune` cleans up)\n",
            r.health.as_str()
        ));
    }
    out.push_str(&table(&rows));
    if let (Some(c), Some(sc)) = (&r.conn, &r.state.stateful) {
        use egress_common::{CS_EXPIRED, CS_INSERT_FAILED, CS_INSERTED, CS_INSERTED_INBOUND};
        out.push_str(&format!(
            "stateful: {} connections tracked ({} entries, max {} per family), {} opened here + {} from the other side ({}), {} expired, {} evicted by a full table{}\n",
            c.live,
            c.entries,
            sc.max_flows,
            c.stat(CS_INSERTED),
            c.stat(CS_INSERTED_INBOUND),
            r.state.companion.as_deref().unwrap_or("no companion"),
            c.stat(CS_EXPIRED),
            c.evicted(),
            if c.stat(CS_INSERT_FAILED) > 0 { format!(", {} insert failures", c.stat(CS_INSERT_FAILED)) } else { String::new() }
        ));
    }
    if let Some(d) = &r.dns {
        out.push_str(&crate::observe::dns::stats_line(d));
    }
    if r.events.iter().any(|v| *v > 0) {
        out.push_str(&format!(
            "deny events: {} sent, {} held back by the rate limit, {} lost (ring buffer full: no reader, or too slow)\n",
            ev(r, 0),
            ev(r, 1),
            ev(r, 2)
        ));
    }
    let extra: Vec<String> = STAT_NAMES.iter().zip(r.stats.iter()).filter(|(_, v)| **v > 0).map(|(n, v)| format!("{n} {v}")).collect();
    if !extra.is_empty() {
        out.push_str(&format!("not matched against rules: {}\n", extra.join(", ")));
    }
    out
}

/// One frame of `egress counters --watch`: counts and per-second rates since
/// `prev` (read `secs` earlier), rules in file order, the default policy last.
pub fn watch_table(prev: Option<&Readout>, r: &Readout, secs: f64) -> String {
    let rate = |slot: usize| -> (String, String) {
        let Some(p) = prev else { return ("-".into(), "-".into()) };
        let (a, b) = (counter(p, slot), counter(r, slot));
        // A reset in between makes a count smaller: no rate for that frame.
        if b.0 < a.0 || b.1 < a.1 || secs <= 0.0 {
            return ("-".into(), "-".into());
        }
        (format!("{:.0}", (b.0 - a.0) as f64 / secs), human(((b.1 - a.1) as f64 / secs) as u64))
    };
    let mut rows: Vec<[String; 7]> =
        vec![["#".into(), "NAME".into(), "ACTION".into(), "PKTS".into(), "BYTES".into(), "PKTS/S".into(), "BYTES/S".into()]];
    let slots = (1..=r.state.rules.len()).chain(std::iter::once(DEFAULT_COUNTER_SLOT as usize));
    for slot in slots {
        let (num, name, action) = match slot.checked_sub(1).and_then(|i| r.state.rules.get(i)) {
            Some(ri) => (slot.to_string(), ri.name.clone(), action_label(&ri.action, ri.audit)),
            None => ("-".into(), "(default)".into(), action_label(&r.state.default_action, r.state.default_audit)),
        };
        let (p, b) = counter(r, slot);
        let (pr, br) = rate(slot);
        rows.push([num, name, action, p.to_string(), human(b), pr, br]);
    }
    format!(
        "egress on {} (generation {}) at {} UTC, every {secs:.1} s; Ctrl-C stops\n{}",
        r.state.place(),
        r.state.generation,
        utc(crate::dataplane::now_unix()),
        table(&rows)
    )
}

/// What `egress counters --reset` did, for people.
pub fn reset_table(iface: &str, reset: &[(String, crate::dataplane::Count, u64)]) -> String {
    let mut rows: Vec<[String; 4]> = vec![["NAME".into(), "PKTS".into(), "BYTES".into(), "COUNTED SINCE (UTC)".into()]];
    for (name, c, since) in reset {
        rows.push([name.clone(), c.packets.to_string(), human(c.bytes), utc(*since)]);
    }
    format!("reset {} counter(s) on {iface}; they count from now:\n{}", reset.len(), table(&rows))
}

/// What `egress counters --reset` did, for programs.
pub fn reset_json(iface: &str, reset: &[(String, crate::dataplane::Count, u64)]) -> Value {
    let rows: Vec<Value> =
        reset.iter().map(|(n, c, since)| json!({"name": n, "packets": c.packets, "bytes": c.bytes, "since": rfc3339(*since)})).collect();
    json!({"iface": iface, "reset": rows})
}

pub fn status_json(states: &[(State, LinkHealth)]) -> Value {
    let ifs: Vec<Value> = states
        .iter()
        .filter(|(s, _)| !s.is_cgroup())
        .map(|(s, h)| {
            json!({
                "iface": s.iface, "netns": s.netns, "netns_cookie": s.netns_cookie, "ifindex": s.ifindex,
                "hook": s.hook, "mode": s.mode, "stateful": s.stateful.is_some(), "companion": s.companion, "attached": *h == LinkHealth::Attached, "link": h.as_str(), "rules": s.rules.len(),
                "default": s.default_action, "rules_file": s.rules_file, "digest": s.digest,
                "loaded_at": s.loaded_at, "loaded_at_utc": utc(s.loaded_at), "generation": s.generation,
                "flow_cache": s.flow_cache, "debug": s.debug, "pinned": pin_dir(&s.key).display().to_string(),
            })
        })
        .collect();
    let cgroups: Vec<Value> = states
        .iter()
        .filter(|(s, _)| s.is_cgroup())
        .map(|(s, h)| {
            json!({
                "cgroup": s.iface, "cgroup_id": s.cgroup_id, "attached": *h == LinkHealth::Attached, "link": h.as_str(), "rules": s.rules.len(),
                "default": s.default_action, "rules_file": s.rules_file, "digest": s.digest,
                "loaded_at": s.loaded_at, "loaded_at_utc": utc(s.loaded_at), "generation": s.generation,
                "pinned": pin_dir(&s.key).display().to_string(),
            })
        })
        .collect();
    let mut v = json!({ "interfaces": ifs });
    if !cgroups.is_empty() {
        v["cgroups"] = json!(cgroups);
    }
    v
}

pub fn status_table(states: &[(State, LinkHealth)]) -> String {
    if states.is_empty() {
        return "no interface or cgroup has egress rules loaded\n".into();
    }
    let (cgroups, states): (Vec<_>, Vec<_>) = states.iter().cloned().partition(|(s, _)| s.is_cgroup());
    let mut out = if states.is_empty() { String::new() } else { interface_table(&states) };
    if !cgroups.is_empty() {
        let mut rows: Vec<[String; 6]> =
            vec![["CGROUP".into(), "LINK".into(), "RULES".into(), "LOADED (UTC)".into(), "DIGEST".into(), "RULE FILE".into()]];
        for (s, h) in &cgroups {
            rows.push([
                s.iface.clone(),
                h.as_str().into(),
                s.rules.len().to_string(),
                utc(s.loaded_at),
                s.digest.chars().take(19).collect(),
                s.rules_file.clone(),
            ]);
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&table(&rows));
        if cgroups.iter().any(|(_, h)| *h != LinkHealth::Attached) {
            out.push_str("severed: the cgroup was removed; `egress status --prune` removes what is left\n");
        }
    }
    out
}

fn interface_table(states: &[(State, LinkHealth)]) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "NETNS".into(),
        "IFACE".into(),
        "HOOK".into(),
        "LINK".into(),
        "RULES".into(),
        "LOADED (UTC)".into(),
        "DIGEST".into(),
        "RULE FILE".into(),
    ]];
    for (s, h) in states {
        let digest: String = s.digest.chars().take(19).collect();
        rows.push([
            s.netns.clone(),
            s.iface.clone(),
            match &s.companion {
                Some(c) => format!("{} ({}), stateful, companion {c}", s.hook, s.mode),
                None => format!("{} ({})", s.hook, s.mode),
            } + if s.debug { ", debug" } else { "" },
            h.as_str().into(),
            s.rules.len().to_string(),
            utc(s.loaded_at),
            digest,
            s.rules_file.clone(),
        ]);
    }
    let mut out = table(&rows);
    if states.iter().any(|(_, h)| *h != LinkHealth::Attached) {
        out.push_str("severed: the interface or its namespace is gone; `egress status --prune` removes what is left\n");
    }
    out
}

/// Unix seconds as RFC 3339 UTC ("2026-11-25T04:22:00Z").
pub fn rfc3339(secs: u64) -> String {
    utc(secs).replacen(' ', "T", 1) + "Z"
}

/// Unix seconds as "YYYY-MM-DD HH:MM:SS" (UTC), without a date crate.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
