//! What `egress run` shows the outside: Prometheus metrics (`metrics`).

pub mod metrics;
