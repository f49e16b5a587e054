//! What egress shows the outside: Prometheus metrics (`metrics`, served by
//! `egress run`) and its probes (`health`: `/healthz`, `/readyz`), deny events (`events`: `egress events`, `egress run`'s log)
//! debug mode's log (`debug_log`: `egress log`) and what rules by name
//! learned (`dns`: `egress dns`, the counters' DNS section).

pub mod debug_log;
pub mod dns;
pub mod events;
pub mod health;
pub mod metrics;
