//! Deny events for people and programs: `egress events` and `egress run`'s log.
//! Pure: takes what `dataplane::events` read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_common::{ACTION_AUDIT, PCLASS_ICMP, PCLASS_ICMPV6, PCLASS_NO_L4, PCLASS_TCP, PCLASS_UDP};
use serde_json::{Value, json};

use crate::dataplane::{Received, State};

/// One event, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub iface: String,
    /// The rule's name; None for the default policy.
    pub rule: Option<String>,
    pub audit: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: &'static str,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub len: u32,
    pub suppressed: u32,
    /// A DNS query denied by a rule by name: its question name.
    pub qname: Option<String>,
    /// A cgroup's rule set: `iface` is the cgroup's path.
    pub cgroup: bool,
    /// A socket call (connect, sendmsg) refused on a cgroup: the caller's pid
    /// and command name.
    pub caller: Option<(u32, String)>,
}

fn addr(a: &[u8; 16], v6: bool) -> IpAddr {
    if v6 { Ipv6Addr::from(*a).into() } else { Ipv4Addr::new(a[0], a[1], a[2], a[3]).into() }
}

/// RFC 3339 UTC with milliseconds for Unix ns.
fn rfc3339_ms(unix_ns: u128) -> String {
    let secs = (unix_ns / 1_000_000_000) as u64;
    let ms = (unix_ns / 1_000_000 % 1000) as u32;
    let s = crate::counters::rfc3339(secs);
    // "YYYY-MM-DDTHH:MM:SSZ" -> with ".mmm" before the Z.
    format!("{}.{ms:03}Z", s.trim_end_matches('Z'))
}

pub fn decode(r: &Received, st: &State, unix_ns: u128) -> Event {
    let e = &r.event;
    let v6 = e.v6 != 0;
    let fragment = e.pclass & PCLASS_NO_L4 != 0;
    let class = e.pclass & !PCLASS_NO_L4;
    let port = u16::from_be_bytes(e.port);
    let (protocol, ports, icmp) = match class {
        PCLASS_TCP => ("tcp", true, false),
        PCLASS_UDP => ("udp", true, false),
        PCLASS_ICMP => ("icmp", false, true),
        PCLASS_ICMPV6 => ("icmpv6", false, true),
        _ => ("other", false, false),
    };
    let has_l4 = !fragment;
    Event {
        time: rfc3339_ms(unix_ns),
        iface: st.iface.clone(),
        rule: e.slot.checked_sub(1).and_then(|i| st.rules.get(i as usize)).map(|r| r.name.clone()),
        audit: e.action == ACTION_AUDIT,
        src: addr(&e.src, v6),
        dst: addr(&e.dst, v6),
        protocol,
        sport: (ports && has_l4).then(|| u16::from_be_bytes(e.sport)),
        dport: (ports && has_l4).then_some(port),
        icmp_type: (icmp && has_l4).then_some(e.port[0]),
        icmp_code: (icmp && has_l4).then_some(e.port[1]),
        len: e.len,
        suppressed: e.suppressed,
        qname: r.qname.clone(),
        cgroup: st.is_cgroup(),
        caller: r.caller.clone(),
    }
}

impl Event {
    /// `egress events --json`: one object per line (a contract).
    pub fn json(&self) -> Value {
        let mut v = json!({
            "time": self.time, "iface": self.iface, "rule": self.rule, "action": "deny", "audit": self.audit,
            "src": self.src.to_string(), "dst": self.dst.to_string(), "protocol": self.protocol,
            "sport": self.sport, "dport": self.dport, "icmp_type": self.icmp_type, "icmp_code": self.icmp_code,
            "len": self.len, "suppressed": self.suppressed,
        });
        if let Some(q) = &self.qname {
            v["qname"] = json!(q);
        }
        if self.cgroup
            && let Some(m) = v.as_object_mut()
        {
            m.remove("iface");
            m.insert("cgroup".into(), json!(self.iface));
        }
        if let Some((pid, comm)) = &self.caller {
            v["pid"] = json!(pid);
            v["comm"] = json!(comm);
        }
        v
    }

    /// One line for people.
    pub fn text(&self) -> String {
        let what = match (self.sport, self.dport, self.icmp_type) {
            (Some(s), Some(d), _) => format!("{} {}:{s} -> {}:{d}", self.protocol, self.src, self.dst),
            (_, _, Some(t)) => format!("{} {} -> {} type {t} code {}", self.protocol, self.src, self.dst, self.icmp_code.unwrap_or(0)),
            _ => format!("{} {} -> {}", self.protocol, self.src, self.dst),
        };
        let rule = self.rule.as_deref().map(|r| format!("rule '{r}'")).unwrap_or_else(|| "default policy".into());
        let action = if self.audit { "audit (would deny)" } else { "deny" };
        let what = match (&self.qname, &self.caller) {
            (Some(q), _) => format!("DNS query for {q}, {what}"),
            (None, Some((pid, comm))) => format!("{comm}[{pid}] refused (EPERM) {what}"),
            (None, None) => what,
        };
        let more = if self.suppressed > 0 { format!(" (+{} more held back by the rate limit)", self.suppressed) } else { String::new() };
        let at = if self.cgroup { format!("cgroup {}", self.iface) } else { self.iface.clone() };
        format!("{} {at} {action} by {rule}: {what}, {} bytes{more}", self.time, self.len)
    }
}
