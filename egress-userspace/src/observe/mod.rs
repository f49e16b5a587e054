//! What egress shows the outside: Prometheus metrics (`metrics`, served by
//! `egress run`) and deny events (`events`: `egress events`, `egress run`'s log).

pub mod events;
pub mod metrics;
