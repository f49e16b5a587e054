//! Prometheus metrics of `egress run --metrics ADDR:PORT`: the standard text
//! exposition (prometheus-client) on `/metrics`, served by axum beside the
//! probes `/healthz` and `/readyz` (health.rs). Every
//! scrape reads the counters of each managed attachment from its pinned maps,
//! so the figures are the ones `egress counters` shows, never a cached copy.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::dataplane::{self, Readout, Target};

/// What the service knows about one managed attachment (updated after every
/// reconciliation; read by each scrape).
#[derive(Clone, Debug)]
pub struct Tracked {
    pub iface: String,
    pub hook: &'static str,
    /// Where its rules are enforced (None until applied).
    pub target: Option<Target>,
    /// Rule sets applied or replaced by this service.
    pub reloads: u64,
    /// Attempts that left the running rules in place (invalid file, kernel refusal).
    pub failures: u64,
    /// Unix seconds of the last successful reload (0: none).
    pub last_reload: u64,
    /// The configured rule file.
    pub rules_file: String,
    /// Whether the rule file as it is now is what is enforced (false: the
    /// running rules are older, or none; see `error`).
    pub file_applied: bool,
    /// Why the last attempt left the running rules in place (or found nothing to attach to).
    pub error: Option<String>,
}

/// The service's side of the metrics: a snapshot it replaces as it works.
#[derive(Debug, Default)]
pub struct Shared {
    pub tracked: Mutex<Vec<Tracked>>,
}

/// The address `--metrics` names: "PORT" binds 127.0.0.1 only, else ADDR:PORT.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>().map_err(|_| format!("--metrics {s}: expected PORT (127.0.0.1 only) or ADDR:PORT, e.g. 9100 or [::]:9100"))
}

/// The metrics listener, bound in the network namespace egress was started
/// in (before `--netns` is entered: a scraper on the host must reach it).
#[derive(Debug)]
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub addr: SocketAddr,
    /// That namespace, as the kernel names it (`net:[INODE]`).
    pub netns: String,
}

/// Binds `addr`; a port in use is an error at start.
pub fn bind(addr: SocketAddr) -> Result<Listener, String> {
    let socket = std::net::TcpListener::bind(addr).map_err(|e| format!("--metrics: cannot listen on {addr}: {e}"))?;
    let netns = std::fs::read_link("/proc/self/ns/net").map(|p| p.display().to_string()).unwrap_or_else(|_| "unknown".into());
    Ok(Listener { socket, addr, netns })
}

#[derive(Debug)]
struct EgressCollector(Arc<Shared>);

type Labels = Vec<(&'static str, String)>;

/// One metric family: (labels, value) per series.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    series: Vec<(Labels, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, counter: bool) -> Family {
        Family { name, help, counter, series: Vec::new() }
    }
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.series.is_empty() {
            return Ok(());
        }
        let kind = if self.counter { MetricType::Counter } else { MetricType::Gauge };
        let mut fam = encoder.encode_descriptor(self.name, self.help, None, kind)?;
        for (labels, v) in &self.series {
            let m = fam.encode_family(labels)?;
            if self.counter { ConstCounter::new(*v as u64).encode(m)? } else { ConstGauge::new(*v).encode(m)? }
        }
        Ok(())
    }
}

impl Collector for EgressCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tracked = self.0.tracked.lock().map(|t| t.clone()).unwrap_or_default();
        let mut f = Families::new();
        for t in &tracked {
            f.service(t);
            if let Some(target) = &t.target
                && let Ok(r) = dataplane::read_counters(target)
            {
                f.readout(t, &r);
            }
        }
        for fam in f.all() {
            fam.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// Every family egress exports.
struct Families {
    rule_packets: Family,
    rule_bytes: Family,
    rule_last_hit: Family,
    default_packets: Family,
    default_bytes: Family,
    unclassified: Family,
    generation: Family,
    reloads: Family,
    failures: Family,
    last_reload: Family,
    file_applied: Family,
    ruleset_info: Family,
    flows_tracked: Family,
    flows_inserted: Family,
    flows_expired: Family,
    flows_evicted: Family,
    established_packets: Family,
    established_bytes: Family,
    events: Family,
    dns_addresses: Family,
    dns_answers: Family,
    dns_learned: Family,
    dns_ignored: Family,
    dns_queries: Family,
}

impl Families {
    fn new() -> Families {
        Families {
            rule_packets: Family::new("egress_rule_packets", "Packets decided by the rule (counted across reloads).", true),
            rule_bytes: Family::new("egress_rule_bytes", "Bytes decided by the rule (frame length at the hook).", true),
            rule_last_hit: Family::new("egress_rule_last_hit_timestamp_seconds", "Unix time of the rule's latest packet.", false),
            default_packets: Family::new("egress_default_packets", "Packets no rule matched (the default policy).", true),
            default_bytes: Family::new("egress_default_bytes", "Bytes no rule matched (the default policy).", true),
            unclassified: Family::new("egress_unclassified_packets", "Packets not matched against the rules, by reason.", true),
            generation: Family::new("egress_ruleset_generation", "Generation of the enforced rule set (1 = first apply).", false),
            reloads: Family::new("egress_reloads", "Rule sets applied or replaced by this service.", true),
            failures: Family::new("egress_reload_failures", "Reloads that left the running rules in place.", true),
            last_reload: Family::new("egress_last_reload_timestamp_seconds", "Unix time of the last successful reload.", false),
            file_applied: Family::new(
                "egress_rules_file_applied",
                "1 when the configured rule file, as it is now, is what is enforced; 0 when the running rules are older (the file is invalid or the kernel refused it) or none are applied.",
                false,
            ),
            ruleset_info: Family::new("egress_ruleset_info", "The enforced rule set: its digest (value 1).", false),
            flows_tracked: Family::new("egress_flows_tracked", "Live connections in the flow table (stateful mode).", false),
            flows_inserted: Family::new("egress_flows_inserted", "Connections inserted into the flow table.", true),
            flows_expired: Family::new("egress_flows_expired", "Connections removed after their idle timeout.", true),
            flows_evicted: Family::new("egress_flows_evicted", "Connections pushed out by a full table (table-full events).", true),
            established_packets: Family::new("egress_established_packets", "Packets passed as ESTABLISHED or RELATED.", true),
            established_bytes: Family::new("egress_established_bytes", "Bytes passed as ESTABLISHED or RELATED.", true),
            events: Family::new(
                "egress_deny_events",
                "Deny events by outcome: sent, suppressed (rate limit), lost (ring buffer full).",
                true,
            ),
            dns_addresses: Family::new(
                "egress_dns_addresses",
                "Addresses learned from DNS answers and not expired (rules by name).",
                false,
            ),
            dns_answers: Family::new("egress_dns_answers", "DNS answers that taught at least one address.", true),
            dns_learned: Family::new(
                "egress_dns_addresses_learned",
                "Learned (address, pattern) pairs by outcome: new, refreshed, evicted (pushed out of a full table).",
                true,
            ),
            dns_ignored: Family::new(
                "egress_dns_answers_ignored",
                "DNS answers (or addresses) that taught nothing, by reason: not_from_resolver, no_matching_query, malformed, table_full.",
                true,
            ),
            dns_queries: Family::new(
                "egress_dns_queries",
                "DNS queries naming a pattern, by outcome: seen (toward a resolver), denied.",
                true,
            ),
        }
    }

    fn all(&self) -> [&Family; 24] {
        [
            &self.rule_packets,
            &self.rule_bytes,
            &self.rule_last_hit,
            &self.default_packets,
            &self.default_bytes,
            &self.unclassified,
            &self.generation,
            &self.reloads,
            &self.failures,
            &self.last_reload,
            &self.file_applied,
            &self.ruleset_info,
            &self.flows_tracked,
            &self.flows_inserted,
            &self.flows_expired,
            &self.flows_evicted,
            &self.established_packets,
            &self.established_bytes,
            &self.events,
            &self.dns_addresses,
            &self.dns_answers,
            &self.dns_learned,
            &self.dns_ignored,
            &self.dns_queries,
        ]
    }

    fn service(&mut self, t: &Tracked) {
        let l = base(t);
        self.reloads.series.push((l.clone(), t.reloads as f64));
        self.failures.series.push((l.clone(), t.failures as f64));
        self.file_applied.series.push((l.clone(), if t.file_applied { 1.0 } else { 0.0 }));
        if t.last_reload > 0 {
            self.last_reload.series.push((l, t.last_reload as f64));
        }
    }

    fn readout(&mut self, t: &Tracked, r: &Readout) {
        let l = base(t);
        let st = &r.state;
        for (i, ri) in st.rules.iter().enumerate() {
            let c = r.counters.get(i + 1).copied().unwrap_or_default();
            let action = if ri.audit { "audit".to_string() } else { ri.action.clone() };
            let mut rl = l.clone();
            rl.push(("rule", ri.name.clone()));
            rl.push(("action", action));
            self.rule_packets.series.push((rl.clone(), c.packets as f64));
            self.rule_bytes.series.push((rl.clone(), c.bytes as f64));
            if c.last_hit > 0 {
                self.rule_last_hit.series.push((rl, c.last_hit as f64));
            }
        }
        let d = r.counters.first().copied().unwrap_or_default();
        let mut dl = l.clone();
        dl.push(("action", if st.default_audit { "audit".into() } else { st.default_action.clone() }));
        self.default_packets.series.push((dl.clone(), d.packets as f64));
        self.default_bytes.series.push((dl, d.bytes as f64));
        for (name, v) in egress_common::STAT_NAMES.iter().zip(&r.stats) {
            let mut ul = l.clone();
            ul.push(("reason", name.to_string()));
            self.unclassified.series.push((ul, *v as f64));
        }
        self.generation.series.push((l.clone(), st.generation as f64));
        let mut il = l.clone();
        il.push(("digest", st.digest.clone()));
        self.ruleset_info.series.push((il, 1.0));
        if let Ok(es) = dataplane::event_stats(st) {
            for (outcome, v) in ["sent", "suppressed", "lost"].iter().zip(es) {
                let mut el = l.clone();
                el.push(("outcome", outcome.to_string()));
                self.events.series.push((el, v as f64));
            }
        }
        if let Some(d) = &r.dns {
            use egress_common::*;
            let st = |i: u32| d.stats.get(i as usize).copied().unwrap_or(0) as f64;
            let with = |k: &'static str, v: &str| {
                let mut x = l.clone();
                x.push((k, v.to_string()));
                x
            };
            self.dns_addresses.series.push((l.clone(), d.learned.len() as f64));
            self.dns_answers.series.push((l.clone(), st(DS_ANSWERS)));
            for (o, i) in [("new", DS_LEARNED), ("refreshed", DS_REFRESHED), ("evicted", DS_EVICTED)] {
                self.dns_learned.series.push((with("outcome", o), st(i)));
            }
            for (o, i) in [
                ("not_from_resolver", DS_NOT_RESOLVER),
                ("no_matching_query", DS_NO_QUERY),
                ("malformed", DS_MALFORMED),
                ("table_full", DS_TABLE_FULL),
            ] {
                self.dns_ignored.series.push((with("reason", o), st(i)));
            }
            for (o, i) in [("seen", DS_QUERIES), ("denied", DS_QUERIES_DENIED)] {
                self.dns_queries.series.push((with("outcome", o), st(i)));
            }
        }
        if let Some(c) = &r.conn {
            use egress_common::{
                CS_ESTABLISHED_BYTES, CS_ESTABLISHED_PACKETS, CS_EXPIRED, CS_INSERTED, CS_INSERTED_INBOUND, CS_RELATED_BYTES,
                CS_RELATED_PACKETS,
            };
            self.flows_tracked.series.push((l.clone(), c.live as f64));
            self.flows_inserted.series.push((l.clone(), (c.stat(CS_INSERTED) + c.stat(CS_INSERTED_INBOUND)) as f64));
            self.flows_expired.series.push((l.clone(), c.stat(CS_EXPIRED) as f64));
            self.flows_evicted.series.push((l.clone(), c.evicted() as f64));
            self.established_packets.series.push((l.clone(), (c.stat(CS_ESTABLISHED_PACKETS) + c.stat(CS_RELATED_PACKETS)) as f64));
            self.established_bytes.series.push((l, (c.stat(CS_ESTABLISHED_BYTES) + c.stat(CS_RELATED_BYTES)) as f64));
        }
    }
}

/// An interface's series: iface and hook; a cgroup's: cgroup (its path) and hook "cgroup".
fn base(t: &Tracked) -> Labels {
    let place = if t.hook == "cgroup" { "cgroup" } else { "iface" };
    vec![(place, t.iface.clone()), ("hook", t.hook.to_string())]
}

/// The exposition text of one scrape.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EgressCollector(shared.clone())));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Serves `/metrics` on `listener` until the runtime stops. Any other path is a 404.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    use axum::{Router, http::header, response::IntoResponse, routing::get};
    let (m, r) = (shared.clone(), shared);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let shared = m.clone();
                async move {
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], render(&shared))
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let shared = r.clone();
                async move {
                    let (ready, body) = super::health::readiness(&shared);
                    let code = if ready { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
                    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string() + "\n").into_response()
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics server stopped: {e}");
    }
}
