//! Importers: rule sets of other systems turned into egress rule files (pure:
//! text in, rule file text out; the caller reads and writes the files).
//! `cloudstack`: CloudStack's egress firewall rules (`egress import cloudstack`,
//! `egress apply --cloudstack`).

pub mod cloudstack;
