//! What egress shows the outside: Prometheus metrics (`metrics`, served by
//! `egress run`), deny events (`events`: `egress events`, `egress run`'s log)
//! and debug mode's log (`debug_log`: `egress log`).

pub mod debug_log;
pub mod events;
pub mod metrics;
