//! Arbitrary frames through the loaded classifier (BPF_PROG_TEST_RUN, root):
//! its verdict must be the reference parser's and classifier's. One fixed rule
//! set with prefixes of both families, port ranges, ICMP type/code and
//! protocol-only rules; the fuzzer shapes the frames (Ethernet, VLAN tags, IPv4
//! options and fragments, IPv6 extension header chains, truncation anywhere).
#![no_main]

use std::sync::Mutex;

use egress::{compile, dataplane::Loaded, rules};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const RULES: &str = r#"default_policy = "allow"
[[rule]]
name = "web"
action = "allow"
dst = ["192.0.2.0/24", "2001:db8:1::/48"]
protocol = "tcp"
ports = "80-443"
[[rule]]
name = "no-tcp-192"
action = "deny"
dst = ["192.0.2.0/24"]
protocol = "tcp"
[[rule]]
name = "dns"
action = "deny"
src = ["198.51.100.0/25"]
protocol = "udp"
ports = 53
[[rule]]
name = "ping"
action = "deny"
protocol = "icmp"
icmp_type = 8
[[rule]]
name = "ping6"
action = "deny"
dst = ["2001:db8::/32"]
protocol = "icmpv6"
icmp_type = 128
icmp_code = 0
[[rule]]
name = "other-v6"
action = "deny"
dst = ["2001:db8:ff::/64"]
"#;

static STATE: Mutex<Option<(rules::RuleSet, Loaded)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    // TC test runs need at least an Ethernet header.
    if data.len() < 14 || !common::is_root() {
        return;
    }
    let Ok(mut guard) = STATE.lock() else { return };
    let (rs, l) = guard.get_or_insert_with(|| {
        let rs = rules::parse("packet.toml", RULES).unwrap_or_else(|e| panic!("{e}"));
        let c = compile::compile(&rs).unwrap_or_else(|e| panic!("{e}"));
        let l = common::load(&c);
        (rs, l)
    });
    let Some(k) = common::kernel_passes(l, data) else { return };
    let r = egress::reference::frame_passes(rs, data, true);
    assert_eq!(k, r, "kernel passes: {k}, reference: {:?}", egress::reference::parse_frame(data, true));
});
