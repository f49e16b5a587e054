//! `egress explain`: which rule decides a packet. Live: the loaded classifier
//! runs the packet (dataplane::explain, nothing changes) and the reference
//! classifier gives its answer on the rule file that was applied; the two must
//! agree. With `--rules FILE`: the reference alone (no root).

use std::{net::IpAddr, path::Path};

use serde_json::{Value, json};

use crate::{
    dataplane::{self, Target},
    packet::{self, ETH_HLEN, Shape},
    reference::{self, L4, PacketMeta},
    rules::{Action, RuleSet},
};

/// The protocol of the synthetic packet.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

/// The packet asked about (command-line fields).
#[derive(Clone, Debug)]
pub struct Query {
    pub proto: Proto,
    /// None: chosen (see [`Query::with_source`]).
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
}

impl Query {
    /// The packet, or what is wrong with the fields (a usage error).
    pub fn meta(&self) -> Result<PacketMeta, String> {
        let v6 = self.dst.is_ipv6();
        // Checked with the unspecified address when the source is still to be chosen.
        let src = self.src.unwrap_or(if v6 { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) });
        if src.is_ipv6() != v6 {
            return Err(format!("--src {} and --dst {} are of different address families", src, self.dst));
        }
        let l4 = match self.proto {
            Proto::Tcp | Proto::Udp => {
                if self.icmp_type.is_some() || self.icmp_code.is_some() {
                    return Err("--icmp-type and --icmp-code are for --proto icmp or icmpv6".into());
                }
                L4::Ports { dport: self.dport.ok_or("--dport is required for --proto tcp and udp")? }
            }
            Proto::Icmp | Proto::Icmpv6 => {
                if self.sport.is_some() || self.dport.is_some() {
                    return Err("--sport and --dport are for --proto tcp and udp".into());
                }
                if (self.proto == Proto::Icmpv6) != v6 {
                    return Err(format!("--proto {} does not go with {} addresses", self.proto_name(), if v6 { "IPv6" } else { "IPv4" }));
                }
                // Default: an echo request.
                L4::Icmp { ty: self.icmp_type.unwrap_or(if v6 { 128 } else { 8 }), code: self.icmp_code.unwrap_or(0) }
            }
        };
        let proto = match self.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Icmpv6 => 58,
        };
        Ok(PacketMeta { src, dst: self.dst, proto, l4 })
    }

    /// The packet with its source: --src, else the one egress chooses, and
    /// why (a note for the output). On an interface: its first address of the
    /// packet's family (a global one before a link-local one). Elsewhere, or
    /// when the interface has none: the unspecified address, only when no rule
    /// names a source (then any source is judged alike).
    pub fn with_source(&self, rs: &RuleSet, iface: Option<&str>) -> anyhow::Result<(PacketMeta, Option<String>)> {
        let m = self.meta().map_err(|e| anyhow::anyhow!(e))?;
        if self.src.is_some() {
            return Ok((m, None));
        }
        let v6 = self.dst.is_ipv6();
        let family = if v6 { "IPv6" } else { "IPv4" };
        if let Some(iface) = iface {
            let mut addrs: Vec<IpAddr> = dataplane::iface_addresses(iface)?.into_iter().filter(|a| a.is_ipv6() == v6).collect();
            addrs.sort_by_key(|a| matches!(a, IpAddr::V6(x) if x.is_unicast_link_local()));
            if let Some(&src) = addrs.first() {
                return Ok((PacketMeta { src, ..m }, Some(format!("--src not given: {src}, the first {family} address of {iface}"))));
            }
            if rs.names_sources() {
                anyhow::bail!("{iface} has no {family} address and the rules name sources: give the packet's source with --src");
            }
        } else if rs.names_sources() {
            anyhow::bail!("the rules name sources: give the packet's source with --src");
        }
        Ok((m, Some("--src not given: any source (no rule names one)".into())))
    }

    fn proto_name(&self) -> &'static str {
        match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        }
    }

    /// The packet as a frame (`has_eth`: with an Ethernet header), source port set.
    fn frame(&self, m: &PacketMeta, has_eth: bool) -> Vec<u8> {
        let mut f = packet::build(m, &Shape { payload: 18, ..Shape::default() });
        if let (Some(sport), L4::Ports { .. }) = (self.sport, m.l4) {
            let l4 = ETH_HLEN + if m.dst.is_ipv6() { 40 } else { 20 };
            f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        }
        if has_eth { f } else { f.split_off(ETH_HLEN) }
    }

    /// One line describing the packet.
    pub fn describe(&self, m: &PacketMeta) -> String {
        match m.l4 {
            L4::Ports { dport } => format!("{} {}:{} -> {}:{dport}", self.proto_name(), m.src, self.sport.unwrap_or(0), m.dst),
            L4::Icmp { ty, code } => format!("{} {} -> {} type {ty} code {code}", self.proto_name(), m.src, m.dst),
            L4::None => format!("{} {} -> {}", self.proto_name(), m.src, m.dst),
        }
    }
}

/// A decision named: the rule (name, line) or the default policy, the action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rule: Option<(String, usize)>,
    pub action: Action,
    /// A deny in audit mode: counted as a deny, the packet passes.
    pub audit: bool,
    /// "rule", "default" or "established".
    pub decided_by: &'static str,
    /// The set entries the packet's addresses matched (a rule naming sets).
    pub sets: Vec<SetMatch>,
    /// The learned names a deciding rule by name matched through.
    pub names: Vec<NameMatch>,
}

/// Where a packet's address met a set: `src` or `dst`, the set, the entry and
/// the entry's origin (`blocklist.netset:12`, `country KP`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetMatch {
    pub field: &'static str,
    pub set: String,
    pub entry: ipnet::IpNet,
    pub origin: String,
}

/// A learned name through which a rule by name matched the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameMatch {
    /// The question name the address was learned from.
    pub name: String,
    pub pattern: String,
    pub expires_in: u64,
}

/// The set entries that hold the packet's addresses, for a rule naming sets: a
/// field matched by one of the rule's own CIDRs names no set.
fn set_matches(rs: &RuleSet, r: &crate::rules::Rule, m: &PacketMeta) -> Vec<SetMatch> {
    let mut out = Vec::new();
    for (field, nets, own, names, addr) in
        [("src", &r.src, r.sets.src_own, &r.sets.src, m.src), ("dst", &r.dst, r.sets.dst_own, &r.sets.dst, m.dst)]
    {
        if names.is_empty() || nets.as_ref().is_some_and(|v| v[..own].iter().any(|n| n.contains(&addr))) {
            continue;
        }
        if let Some((set, (entry, origin))) = names.iter().find_map(|n| rs.set(n).and_then(|s| s.entry_of(addr).map(|e| (n, e)))) {
            out.push(SetMatch { field, set: set.clone(), entry, origin });
        }
    }
    out
}

impl Answer {
    fn of_slot(rs: &RuleSet, slot: u32, action: Action, audit: bool, m: &PacketMeta) -> Answer {
        match slot.checked_sub(1).and_then(|i| rs.rules.get(i as usize)) {
            Some(r) => Answer {
                rule: Some((r.name.clone(), r.line)),
                action,
                audit,
                decided_by: "rule",
                sets: set_matches(rs, r, m),
                names: Vec::new(),
            },
            None => Answer { rule: None, action, audit, decided_by: "default", sets: Vec::new(), names: Vec::new() },
        }
    }

    /// `"sets"` only when the packet met a set (the shape is otherwise the one
    /// it always was).
    pub fn json(&self) -> Value {
        let mut v = json!({"rule": self.rule.as_ref().map(|r| &r.0), "line": self.rule.as_ref().map(|r| r.1),
               "action": self.action.as_str(), "audit": self.audit, "decided_by": self.decided_by});
        if !self.sets.is_empty() {
            let sets: Vec<Value> = self
                .sets
                .iter()
                .map(|s| json!({"field": s.field, "set": s.set, "entry": s.entry.to_string(), "origin": s.origin}))
                .collect();
            v["sets"] = json!(sets);
        }
        if !self.names.is_empty() {
            let names: Vec<Value> =
                self.names.iter().map(|n| json!({"name": n.name, "pattern": n.pattern, "expires_in": n.expires_in})).collect();
            v["names"] = json!(names);
        }
        v
    }

    pub fn text(&self) -> String {
        let action = if self.audit { "deny (audit: counted, the packet passes)" } else { self.action.as_str() };
        let mut t = match (&self.rule, self.decided_by) {
            (_, "established") => format!("{} (part of a live connection: ESTABLISHED, no rule consulted)", self.action.as_str()),
            (Some((name, line)), _) => format!("{action} by rule '{name}' (line {line})"),
            (None, _) => format!("{action} by the default policy"),
        };
        for s in &self.sets {
            t.push_str(&format!(", {} in @{} entry {} ({})", s.field, s.set, s.entry, s.origin));
        }
        for n in &self.names {
            t.push_str(&format!(", dst learned for {} from {} (expires in {}s)", n.pattern, n.name, n.expires_in));
        }
        t
    }
}

/// The reference classifier's answer.
pub fn reference(rs: &RuleSet, m: &PacketMeta) -> Answer {
    reference_learned(rs, m, &[])
}

/// The reference classifier's answer, with the names the destination is
/// learned from (rules by name match through them; a deciding rule by name
/// shows the names of its patterns).
pub fn reference_learned(rs: &RuleSet, m: &PacketMeta, learned: &[NameMatch]) -> Answer {
    let pats: Vec<&str> = learned.iter().map(|n| n.pattern.as_str()).collect();
    let (slot, action) = reference::classify_learned(rs, m, &pats);
    let audit = match slot.checked_sub(1).and_then(|i| rs.rules.get(i as usize)) {
        Some(r) => r.audit,
        None => rs.default_code() == egress_common::ACTION_AUDIT,
    };
    let mut a = Answer::of_slot(rs, slot, action, audit, m);
    a.names = names_of(rs, slot, learned);
    a
}

/// The learned names of the rule in `slot`'s patterns.
fn names_of(rs: &RuleSet, slot: u32, learned: &[NameMatch]) -> Vec<NameMatch> {
    match slot.checked_sub(1).and_then(|i| rs.rules.get(i as usize)) {
        Some(r) if !r.fqdn.is_empty() => learned.iter().filter(|n| r.fqdn.contains(&n.pattern)).cloned().collect(),
        _ => Vec::new(),
    }
}

/// A live explanation: the kernel's answer, the reference's, and where.
pub struct Live {
    pub kernel: Answer,
    pub reference: Answer,
    pub generation: u64,
    pub rules_file: String,
    /// The packet asked about (its source chosen when --src was not given).
    pub meta: PacketMeta,
    /// How the source was chosen, when --src was not given.
    pub src_note: Option<String>,
}

impl Live {
    /// Whether the two classifiers agree (a live connection's verdict has no
    /// reference counterpart: it passes whatever the rules say).
    pub fn agree(&self) -> bool {
        self.kernel.decided_by == "established" || self.kernel == self.reference
    }
}

/// Runs the packet through the classifier enforced at `t` and the reference
/// classifier on the rule file it was applied from (which must be unchanged).
pub fn live(t: &Target, q: &Query) -> anyhow::Result<Live> {
    let cgroup = t.hook == crate::hook::Hook::Cgroup;
    let has_eth = !cgroup && dataplane::has_ethernet(&t.iface)?;
    let before = dataplane::read_state(&t.key())?.ok_or_else(|| anyhow::anyhow!("no rules on {}", t.describe()))?;
    let rs = applied_rules(&before)?;
    let (meta, src_note) = q.with_source(&rs, (!cgroup).then_some(t.iface.as_str()))?;
    let m = &meta;
    let (st, d) = dataplane::explain(t, &q.frame(m, has_eth))?;
    // What the destination is learned for (rules by name), as the kernel saw it.
    let learned: Vec<NameMatch> = match st.dns {
        Some(_) => {
            let (_, r) = dataplane::read_dns(t)?;
            r.learned
                .iter()
                .filter(|l| l.address == m.dst)
                .filter_map(|l| {
                    let p = dataplane::PatternInfo::of_id(&st.patterns, l.pattern)?;
                    Some(NameMatch { name: l.name.clone(), pattern: p.pattern.clone(), expires_in: l.expires_in })
                })
                .collect()
        }
        None => Vec::new(),
    };
    // Replaced in between: the reference answers on the file the kernel ran.
    let rs = if st.generation == before.generation { rs } else { applied_rules(&st)? };
    let action = if d.deny { Action::Deny } else { Action::Allow };
    let kernel = if d.established {
        Answer { rule: None, action: Action::Allow, audit: false, decided_by: "established", sets: Vec::new(), names: Vec::new() }
    } else {
        let mut a = Answer::of_slot(&rs, d.slot, action, d.audit, m);
        a.names = names_of(&rs, d.slot, &learned);
        a
    };
    let reference = reference_learned(&rs, m, &learned);
    Ok(Live { kernel, reference, generation: st.generation, rules_file: st.rules_file, meta, src_note })
}

/// The rule file a state was applied from, parsed again (it must be unchanged).
fn applied_rules(st: &dataplane::State) -> anyhow::Result<RuleSet> {
    let path = Path::new(&st.rules_file);
    if st.rules_file.starts_with("/dev/") || st.rules_file.starts_with("/proc/") {
        anyhow::bail!(
            "the rules at generation {} were applied from {} (a pipe or device, not a file to read again): the reference answer needs the applied file; use `explain --rules FILE` with the same rules",
            st.generation,
            st.rules_file
        );
    }
    let text =
        crate::input::read_text(path, "rule file").map_err(|e| anyhow::anyhow!("{e} (the applied rule file, for the reference answer)"))?;
    let changed = || {
        anyhow::anyhow!(
            "{} (or a set file it names) changed since it was applied (generation {}): the reference answer needs the applied files; apply them again, or use `explain --rules`",
            st.rules_file,
            st.generation
        )
    };
    let loader = crate::input::FsLoader::for_rules(path);
    let rs = crate::rules::parse_with(&st.rules_file, &text, &loader)
        .map_err(|e| if crate::digest(text.as_bytes()) != st.digest { changed() } else { anyhow::anyhow!("{e}") })?;
    if loader.digest(text.as_bytes()) != st.digest {
        return Err(changed());
    }
    Ok(rs)
}
