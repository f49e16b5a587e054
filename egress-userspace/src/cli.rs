//! Command-line interface (clap). The help text is the first manual.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "egress",
    version,
    about = "Enforce egress rules in the kernel with a TC-egress eBPF classifier",
    long_about = "Enforce egress rules in the kernel with a TC-egress eBPF classifier.\n\n\
Rules (source/destination CIDRs, protocol, destination ports, ICMP type/code; first match\n\
wins, else the default policy) are written in a TOML file, compiled into LPM-trie maps and\n\
enforced on an interface's egress hook, with per-rule packet and byte counters.\n\n\
Typical use:\n  egress check --rules rules.toml\n  egress apply --iface eth0 --rules rules.toml\n  egress counters --iface eth0\n  egress detach --iface eth0\n\n\
Exit status: 0 success; 2 invalid rule file or usage; 1 anything else (missing interface,\n\
not root, kernel refusal).\n\
Logging: set EGRESS_LOG=debug (tracing env-filter syntax) for details on stderr.",
    after_help = "Rule file format: see README.md (section \"The rule file\") or examples/."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate, compile, load and attach a rule file to an interface's TC egress hook.
    ///
    /// Enforcement and counters stay after the command exits (the program is pinned
    /// under /sys/fs/bpf/egress/IFACE). Run again on the same interface to replace the
    /// rule set atomically: no packet passes unfiltered meanwhile, and if the new set
    /// fails to validate or load, the old one stays enforced. Needs root.
    Apply {
        /// Interface whose egress traffic is filtered (e.g. eth0).
        #[arg(long, short = 'i', value_name = "IFACE")]
        iface: String,
        /// Rule file (TOML).
        #[arg(long, short = 'r', value_name = "FILE")]
        rules: PathBuf,
        /// Flow verdict cache size, slots per address family (0 turns it off).
        ///
        /// The first packet of a flow (source, destination, protocol, destination port
        /// or ICMP type/code) runs the full lookup; later ones hit the cache and still
        /// count for their rule. Rounded up to a power of two; a slot takes 32 (IPv4)
        /// / 64 (IPv6) bytes, preallocated and shared by all CPUs. Direct-mapped: a
        /// new flow replaces the flow that had its slot.
        #[arg(long, value_name = "N", default_value_t = egress_common::FLOW_CACHE_ENTRIES)]
        flow_cache: u32,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show per-rule packet and byte counters (like `iptables -L -v`).
    Counters {
        #[arg(long, short = 'i', value_name = "IFACE")]
        iface: String,
        /// Print JSON: {"iface", "rules": [{"name","action","packets","bytes",...}], "default": {...}}.
        #[arg(long)]
        json: bool,
    },
    /// List every interface with rules loaded: hook, rule count, rule file, digest, load time.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove the classifier and its pins from an interface; traffic flows unfiltered.
    Detach {
        #[arg(long, short = 'i', value_name = "IFACE")]
        iface: String,
    },
    /// Validate a rule file without touching the kernel (no root needed).
    Check {
        #[arg(long, short = 'r', value_name = "FILE")]
        rules: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}
