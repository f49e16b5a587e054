//! Command-line interface (clap). The help text is the first manual.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use egress::hook::Hook;

#[derive(Parser, Debug)]
#[command(
    name = "egress",
    version,
    about = "Enforce egress rules in the kernel with a TC-egress eBPF classifier",
    long_about = "Enforce egress rules in the kernel with a TC-egress eBPF classifier.\n\n\
Rules (source/destination CIDRs, protocol, destination ports, ICMP type/code; first match\n\
wins, else the default policy) are written in a TOML file, compiled into LPM-trie maps and\n\
enforced on an interface's egress hook, with per-rule packet and byte counters.\n\n\
Typical use:\n  egress check --rules rules.toml\n  egress apply --iface eth0 --rules rules.toml\n  egress counters --iface eth0\n  egress detach --iface eth0\n  egress run --config /etc/egress/egress.toml    (a service that follows rule files)\n\n\
Interfaces are those of the network namespace egress runs in (`ip netns exec NS egress ...`,\n\
or `--netns NS` from the host); any number of namespaces may use the same interface name.\n\n\
Exit status: 0 success; 2 invalid rule file or usage; 1 anything else (missing interface,\n\
not root, kernel refusal).\n\
Logging: set EGRESS_LOG=debug (tracing env-filter syntax) for details on stderr.",
    after_help = "Rule file format: see README.md (section \"The rule file\") or examples/."
)]
pub struct Cli {
    /// Address the interfaces of another network namespace: a name from `ip netns list`,
    /// a path (/proc/PID/ns/net, a bind mount) or a process id.
    #[arg(long, global = true, value_name = "NAME|PATH|PID")]
    pub netns: Option<String>,
    /// The largest rule file (or config, or CloudStack export) read: bytes, or with
    /// K, M or G (KiB, MiB, GiB). A larger file, or a pipe or device giving more, is
    /// refused before it is parsed.
    #[arg(long, global = true, value_name = "SIZE", default_value = "64M", value_parser = egress::input::parse_size)]
    pub max_file_size: u64,
    /// Use rule files, configs and a state directory that users other than root
    /// can write (refused when egress runs as root, since whoever writes them
    /// decides what is enforced); each is warned about instead.
    #[arg(long, global = true)]
    pub allow_insecure_files: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// An interface and one of its hooks, or a cgroup, as the read-only commands name them.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("at").required(true).args(["iface", "cgroup"])))]
pub struct HookedIface {
    /// The interface (e.g. eth0).
    #[arg(long, short = 'i', value_name = "IFACE")]
    pub iface: Option<String>,
    /// Instead of --iface: a cgroup's rule set (see `apply --cgroup`).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Which hook's rule set (see `apply --hook`).
    #[arg(long, value_enum, default_value_t = Hook::TcEgress)]
    pub hook: Hook,
}

/// How CloudStack rules are imported (`import cloudstack`, `apply --cloudstack`).
#[derive(clap::Args, Debug, Clone)]
pub struct CloudStackOptions {
    /// The network's default egress policy (CloudStack's egressdefaultpolicy: true =
    /// allow). Under allow every CloudStack egress rule denies; under deny every
    /// rule allows.
    #[arg(long, value_enum, value_name = "allow|deny", conflicts_with = "offering")]
    pub default_policy: Option<PolicyArg>,
    /// Take the default egress policy from a listNetworkOfferings or listNetworks
    /// response (JSON): its one entry, or the network named with --network.
    #[arg(long, value_name = "FILE")]
    pub offering: Option<PathBuf>,
    /// Only the rules of this network (their networkid).
    #[arg(long, value_name = "ID")]
    pub network: Option<String>,
    /// The guest network's CIDR: the source of rules whose cidrlist is empty
    /// (CloudStack's "the whole guest network"); required when there are such rules.
    #[arg(long, value_name = "CIDR")]
    pub guest_cidr: Option<ipnet::IpNet>,
    /// Write the valid rules and list the invalid ones (in the file's header and on
    /// stderr) instead of refusing the whole import.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Write CloudStack rules that differ only in their ports (same protocol,
    /// source and destination CIDRs) as one rule with a port list. Safe: every
    /// CloudStack egress rule has the same verdict. The rule's comment lists the
    /// ids it holds; counters are then per merged rule.
    #[arg(long)]
    pub merge_ports: bool,
}

/// A default policy on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyArg {
    Allow,
    Deny,
}

/// What `egress import` reads.
#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// CloudStack egress firewall rules, as `listEgressFirewallRules` returns them
    /// (API JSON, cloudmonkey's JSON output, or a bare array of rule objects).
    ///
    /// Writes an egress rule file (TOML, commented, each rule named after its
    /// CloudStack id) to stdout or -o FILE. Only Active rules are imported (the
    /// others are listed in the file's header). CloudStack's validation applies:
    /// ports only with tcp/udp (1..65535, start <= end), ICMP type/code -1 or
    /// 0..255 with icmp only, valid CIDRs; an invalid rule is an error naming its
    /// id and field (exit 2, nothing written) unless --skip-invalid.
    ///
    /// Example:
    ///   cmk -o json list egressfirewallrules networkid=$NET > cs.json
    ///   egress import cloudstack --rules cs.json --default-policy allow -o eth1.toml
    Cloudstack {
        /// The listEgressFirewallRules response (JSON).
        #[arg(long, short = 'r', value_name = "FILE")]
        rules: PathBuf,
        #[command(flatten)]
        cs: CloudStackOptions,
        /// Write the rule file here (atomically) instead of to stdout.
        #[arg(long, short = 'o', value_name = "OUT")]
        output: Option<PathBuf>,
        /// Print a JSON summary on stdout (with -o): {"output","rules","default",
        /// "inactive":[{"id","state"}],"skipped":[{"index","id","field","message"}],"other_networks"}.
        #[arg(long, requires = "output")]
        json: bool,
    },
}

/// Log line format of `egress run`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event.
    Human,
    /// One JSON object per line (for journald/Loki/...).
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate, compile, load and attach a rule file to one of an interface's hooks.
    ///
    /// Enforcement and counters stay after the command exits (the program is pinned
    /// under /sys/fs/bpf/egress/). Run again on the same interface and hook to
    /// replace the rule set atomically: no packet passes unfiltered meanwhile, and if
    /// the new set fails to validate or load, the old one stays enforced. Needs root.
    ///
    /// With --cgroup (or --unit) instead of --iface: the rule set applies to the
    /// processes of a cgroup v2 and its descendants (a systemd service, a
    /// container). Every packet their sockets send is classified; a denied TCP
    /// connect() or UDP sendto() fails at once with EPERM (counted on its rule,
    /// reported with the caller's pid and command). Where several cgroups on a
    /// path have rule sets, the nearest ancestor of the process decides.
    #[command(group(clap::ArgGroup::new("at").required(true).args(["iface", "cgroup", "unit"])))]
    Apply {
        /// Interface whose traffic is filtered (e.g. eth0).
        #[arg(long, short = 'i', value_name = "IFACE")]
        iface: Option<String>,
        /// Instead of --iface: a cgroup v2 directory, e.g.
        /// /sys/fs/cgroup/system.slice/nginx.service (found from /proc/mounts on
        /// hosts where cgroup v2 is mounted elsewhere, e.g. /sys/fs/cgroup/unified).
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// Instead of --iface: a systemd unit (e.g. nginx.service), whose cgroup
        /// systemd reports (`systemctl show -p ControlGroup`).
        #[arg(long, value_name = "UNIT")]
        unit: Option<String>,
        /// Where on the interface: tc-egress filters packets leaving it (after
        /// routing and SNAT: a host's own traffic); tc-ingress and xdp filter packets
        /// arriving on it (on a router's guest-facing interface: guest addresses,
        /// before SNAT). xdp runs in the driver (native) where it can, else generic.
        /// An interface may carry all three with different rule sets.
        #[arg(long, value_enum, default_value_t = Hook::TcEgress)]
        hook: Hook,
        /// Rule file (TOML; /dev/stdin reads it from a pipe).
        #[arg(long, short = 'r', value_name = "FILE", required_unless_present = "cloudstack", conflicts_with = "cloudstack")]
        rules: Option<PathBuf>,
        /// Instead of --rules: a CloudStack listEgressFirewallRules response (JSON),
        /// imported as `egress import cloudstack` does and applied in one step (the
        /// rule file it makes is kept under /run/egress/imported/).
        #[arg(long, value_name = "FILE")]
        cloudstack: Option<PathBuf>,
        #[command(flatten)]
        cs: CloudStackOptions,
        /// Flow verdict cache size, slots per address family (0 turns it off).
        ///
        /// A flow (source, destination, protocol, destination port or ICMP
        /// type/code) enters the cache at its second packet: its first two packets
        /// run the full lookup, later ones hit the cache and still count for their
        /// rule (a scan's one-packet flows never touch it). Rounded up to a power of
        /// two; a slot takes 32 (IPv4) / 64 (IPv6) bytes, preallocated and shared by
        /// all CPUs. Direct-mapped: a new flow replaces the flow that had its slot.
        #[arg(long, value_name = "N", default_value_t = egress_common::FLOW_CACHE_ENTRIES)]
        flow_cache: u32,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Deny events per second per rule (overrides the file's [events] rate; 0: none).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=egress_common::MAX_EVENT_RATE as i64))]
        events_rate: Option<u32>,
        /// Refuse a rule file with lint warnings (exit 2, nothing applied); without
        /// it, warnings are printed on stderr and the rules are applied.
        #[arg(long)]
        strict: bool,
        /// Debug mode: attach the classifier's debug twin, which logs (with aya-log)
        /// why it drops each packet it cannot parse (truncated, bad header, too many
        /// VLAN tags or IPv6 extension headers); read it with `egress log`. Off by
        /// default, and the normal classifier carries no logging code at all.
        #[arg(long)]
        debug: bool,
    },
    /// Turn another system's rules into an egress rule file (no root needed).
    Import {
        #[command(subcommand)]
        what: ImportCommand,
    },
    /// Show per-rule packet and byte counters (like `iptables -L -v`).
    Counters {
        #[command(flatten)]
        at: HookedIface,
        /// Print JSON: {"iface", "rules": [{"name","action","packets","bytes",...}], "default": {...}}.
        #[arg(long)]
        json: bool,
        /// Refresh the table every --interval seconds with per-second packet and
        /// byte rates, until Ctrl-C (or --count frames).
        #[arg(long, conflicts_with = "reset")]
        watch: bool,
        /// Seconds between --watch frames.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0, requires = "watch")]
        interval: f64,
        /// Stop --watch after this many frames.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
        /// Start counting again from zero (each rule at once, from one snapshot:
        /// no packet is lost); prints what was reset. All rows, or those named
        /// with --rule ("(default)" for the default policy).
        #[arg(long)]
        reset: bool,
        /// With --reset: only this rule (repeat for more).
        #[arg(long, value_name = "NAME", requires = "reset")]
        rule: Vec<String>,
    },
    /// List what rules by name (dst_fqdn) learned from DNS answers: each
    /// address with the question name it answered, the pattern and rule it was
    /// learned for, and the seconds until it expires.
    ///
    /// Addresses are learned in the kernel, from answers of the [dns] resolvers
    /// to queries seen leaving through the same attachment, before the answer
    /// reaches the application.
    Dns {
        #[command(flatten)]
        at: HookedIface,
        /// Print JSON: [{"name", "address", "pattern", "rule", "expires_in"}].
        #[arg(long)]
        json: bool,
    },
    /// List every attachment: namespace, interface, hook (and how it is attached:
    /// tcx/clsact, XDP native/generic), link health, rule count, rule file.
    ///
    /// An attachment whose interface (or whole namespace) was deleted shows as
    /// "severed": nothing is filtered there any more. `--prune` removes what such
    /// attachments left behind (pins, state); `egress apply` also attaches afresh
    /// over a severed link.
    Status {
        #[arg(long)]
        json: bool,
        /// Remove severed attachments (interface or namespace gone) and say which.
        #[arg(long)]
        prune: bool,
    },
    /// Run as a service: apply the rule files named in a config file, follow them.
    ///
    /// Every [[interface]] of the config gets its rule file applied at start; each
    /// rule file and the config itself are watched (editors that write a new file
    /// and rename it over the old one included), and SIGHUP reloads everything. A
    /// change is validated completely before anything is touched: an invalid file
    /// is logged with exactly the messages of `egress check` and the running rules
    /// stay enforced. Counters of unchanged rules continue across reloads. An
    /// interface that does not exist yet is applied when it appears; one that is
    /// deleted and re-created gets its rules again. SIGTERM/SIGINT end the service
    /// and leave enforcement in place (unless --detach-on-exit). Needs root.
    ///
    /// Config file (TOML, unknown keys are errors):
    ///
    ///   [[interface]]
    ///   name = "eth1"                     # required
    ///   rules = "/etc/egress/eth1.toml"   # required: a rule file
    ///   flow_cache = 65536                # optional, as `apply --flow-cache`
    ///   hook = "tc-egress"                # optional, as `apply --hook`
    ///   debug = false                     # optional, as `apply --debug` (logged here)
    ///
    ///   [[cgroup]]                        # a service's or container's processes
    ///   path = "system.slice/nginx.service"   # required: absolute, or below the cgroup v2 mount
    ///   rules = "/etc/egress/nginx.toml"  # required: a rule file
    ///   flow_cache = 65536                # optional
    ///   debug = false                     # optional
    ///
    /// A cgroup that does not exist yet is applied when it appears; one that is
    /// removed and created again (a restarted service) gets its rules again.
    #[command(verbatim_doc_comment)]
    Run {
        /// The config file (TOML).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Remove the rules from every interface when the service stops.
        #[arg(long)]
        detach_on_exit: bool,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
        /// Seconds between checks for interfaces that are missing or were re-created.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        recheck: f64,
        /// Serve Prometheus metrics on http://ADDR:PORT/metrics (off by default). A
        /// bare PORT listens on 127.0.0.1 only; give an address (0.0.0.0:9100,
        /// [::]:9100) to expose it. Per-rule packets and bytes, default policy,
        /// unclassified packets, rule-set generation, reloads, flow table.
        #[arg(long, value_name = "[ADDR:]PORT")]
        metrics: Option<String>,
    },
    /// Remove the classifier and its pins from an interface; traffic flows unfiltered.
    #[command(group(clap::ArgGroup::new("at").required(true).args(["iface", "cgroup"])))]
    Detach {
        #[arg(long, short = 'i', value_name = "IFACE")]
        iface: Option<String>,
        /// Instead of --iface: the rule set of this cgroup (see `apply --cgroup`).
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// Which hook's rule set (see `apply --hook`); the others stay.
        #[arg(long, value_enum, default_value_t = Hook::TcEgress)]
        hook: Hook,
    },
    /// Validate a rule file without touching the kernel (no root needed).
    ///
    /// Also lints it: warnings (on stderr, and in --json as "warnings") name rules
    /// that can never match because earlier rules cover them (alone or together),
    /// duplicates, rules that only repeat the default policy, allow rules to any
    /// destination, and an empty rule set under default deny. Warnings do not
    /// fail the check unless --strict.
    Check {
        #[arg(long, short = 'r', value_name = "FILE")]
        rules: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Treat lint warnings as errors (exit 2).
        #[arg(long)]
        strict: bool,
    },
    /// Stream the packets denied on an interface's hook, as they happen, until
    /// interrupted.
    ///
    /// The program reports every denied (or audited) packet, rate-limited per rule
    /// in the kernel ([events] rate and burst in the rule file; default 10 a second,
    /// bursts of 20); each event says how many of that rule's events the limit held
    /// back since the previous one. One reader at a time: `egress run` logs the
    /// same events, and two readers split them.
    Events {
        #[command(flatten)]
        at: HookedIface,
        /// One JSON object per line: {"time","iface","rule","action","audit","src","dst",
        /// "protocol","sport","dport","icmp_type","icmp_code","len","suppressed"}.
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Stream the debug log of a rule set applied with --debug (why the program
    /// dropped packets it could not parse), until interrupted.
    ///
    /// Lines come from the kernel through aya-log's ring buffer; one reader at a
    /// time (`egress run` logs them itself for interfaces with `debug = true`).
    Log {
        #[command(flatten)]
        at: HookedIface,
        /// One JSON object per line: {"time","iface","hook","level","message"}.
        #[arg(long)]
        json: bool,
        /// Stop after this many lines.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Which rule decides a packet, and why.
    ///
    /// With --iface: the classifier loaded on that interface's hook runs a synthetic
    /// packet through BPF_PROG_TEST_RUN against the live maps (nothing is attached
    /// and no counter, flow-cache slot or connection entry changes; needs root),
    /// and the reference classifier answers on the rule file that was applied. The
    /// two must agree: exit 1 if they ever do not. With --rules FILE: the
    /// reference classifier alone, no root.
    ///
    /// With --pid: the rules that decide for that process's sockets (the nearest
    /// cgroup at or above its own with rules of egress's), and the answer names
    /// the process.
    ///
    /// Without --src: on an interface, its first address of the packet's family;
    /// on a cgroup or a rule file, any source (only when no rule names one). The
    /// output says which source it chose.
    ///
    /// Examples:
    ///   egress explain --iface eth0 --proto tcp --dst 198.51.100.7 --dport 443
    ///   egress explain --pid 4242 --proto udp --dst 192.0.2.53 --dport 53
    ///   egress explain --rules rules.toml --proto icmpv6 --src 2001:db8::1 --dst 2001:db8::2 --icmp-type 128
    #[command(group(clap::ArgGroup::new("source").required(true).args(["iface", "cgroup", "pid", "rules"])))]
    Explain {
        /// The interface whose loaded rules decide (see --hook).
        #[arg(long, short = 'i', value_name = "IFACE")]
        iface: Option<String>,
        /// Which of the interface's hooks (see `apply --hook`).
        #[arg(long, value_enum, default_value_t = Hook::TcEgress)]
        hook: Hook,
        /// Instead of --iface: the rules loaded on this cgroup (see `apply --cgroup`);
        /// the packet is judged as the cgroup's packet hook judges it.
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// Instead of --iface: the rules that decide for this process (by its cgroup).
        #[arg(long, value_name = "PID")]
        pid: Option<u32>,
        /// A rule file instead of an interface: the reference classifier only.
        #[arg(long, short = 'r', value_name = "FILE")]
        rules: Option<PathBuf>,
        #[arg(long, value_enum)]
        proto: egress::explain::Proto,
        /// The packet's source (default: see above).
        #[arg(long, value_name = "ADDR")]
        src: Option<std::net::IpAddr>,
        #[arg(long, value_name = "ADDR")]
        dst: std::net::IpAddr,
        /// TCP/UDP source port (only stateful mode's connection lookup uses it; default 0).
        #[arg(long, value_name = "PORT")]
        sport: Option<u16>,
        /// TCP/UDP destination port (required for tcp and udp).
        #[arg(long, value_name = "PORT")]
        dport: Option<u16>,
        /// ICMP type (default: echo request, 8 or 128).
        #[arg(long, value_name = "TYPE")]
        icmp_type: Option<u8>,
        /// ICMP code (default 0).
        #[arg(long, value_name = "CODE")]
        icmp_code: Option<u8>,
        /// Print the answer as JSON: {"rule","line","action","decided_by",...}.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (generated from these definitions).
    ///
    /// Examples:
    ///   egress completions bash > /usr/share/bash-completion/completions/egress
    ///   egress completions zsh > /usr/local/share/zsh/site-functions/_egress
    ///   egress completions fish > ~/.config/fish/completions/egress.fish
    #[command(verbatim_doc_comment)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page egress(1) (roff; `egress man | man -l -`).
    ///
    /// With --dir, write egress.1 and a page per command (egress-apply.1, ...) there.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}
