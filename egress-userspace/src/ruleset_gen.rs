//! Seeded rule-set generators for benchmarks and scale tests. Pure; output is rule
//! file text, so the parser is always part of what is measured and tested.
//!
//! Addresses: flow rules use 192.0.2.2 (the benchmark's server inside its own
//! namespace); the bulk of the rules use 10.0.0.0/8 and 2001:db8::/32 prefixes that
//! no benchmark sends traffic to.

use std::fmt::Write as _;

/// SplitMix64: small, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// First destination port of the flow rules: flow `i` goes to udp/`FLOW_PORT_BASE + i`.
pub const FLOW_PORT_BASE: u16 = 10_000;

/// Prefixes that nest and touch, for random rule sets (the kernel's and the
/// compiler's differential tests): documentation ranges, the whole space, a
/// half of it.
pub const RANDOM_V4_NETS: &[&str] = &[
    "0.0.0.0/0",
    "192.0.2.0/24",
    "192.0.2.0/25",
    "192.0.2.128/25",
    "192.0.2.64/26",
    "192.0.2.7/32",
    "192.0.2.8/29",
    "198.51.100.0/23",
    "198.51.100.0/24",
    "198.51.101.0/24",
    "203.0.113.0/24",
    "203.0.113.128/28",
    "128.0.0.0/1",
];
/// [`RANDOM_V4_NETS`] for IPv6.
pub const RANDOM_V6_NETS: &[&str] = &[
    "::/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8:1::/64",
    "2001:db8:1::7/128",
    "2001:db8:2::/48",
    "2001:db8:1:0:8000::/65",
    "2001:db8:1:0:8000::/66",
];

/// A realistic rule set of `n` rules: the last `flows` (at most `n`) allow udp to
/// 192.0.2.2 and 2001:db8:1::2 on one port each (so that benchmark flows each hit a
/// different rule, behind every other rule, as a linear filter's worst case); the
/// others are mostly distinct destination prefixes of mixed
/// lengths (/16../32 IPv4, /48../128 IPv6) with tcp/udp ports and port ranges, 2%
/// source-specific, 5% ICMP, nested and shadowing overlaps (every 97th rule covers
/// an IPv4 /16 or an IPv6 /40), mixed actions. Default policy allow.
pub fn realistic(n: usize, flows: usize, seed: u64) -> String {
    let mut r = Rng::new(seed);
    let mut s = String::with_capacity(n * 96);
    s.push_str("default_policy = \"allow\"\n");
    for i in 0..n {
        let _ = write!(s, "[[rule]]\nname = \"r{i}\"\n");
        let flows = flows.min(n);
        if i >= n - flows {
            let _ = write!(
                s,
                "action = \"allow\"\ndst = [\"192.0.2.2/32\", \"2001:db8:1::2/128\"]\nprotocol = \"udp\"\nports = \"{}\"\n",
                FLOW_PORT_BASE as usize + i - (n - flows)
            );
            continue;
        }
        let action = if r.range(0, 3) == 0 { "allow" } else { "deny" };
        let _ = writeln!(s, "action = \"{action}\"");
        let v6 = r.range(0, 3) == 0;
        let dst = if i % 97 == 0 {
            // Broad rules over a slice of the space (1/256 of it each).
            if v6 { format!("2001:db8:{:x}00::/40", r.range(1, 256)) } else { format!("10.{}.0.0/16", r.range(0, 256)) }
        } else if v6 {
            let len = [48u64, 56, 64, 128][r.range(0, 4) as usize];
            let (a, b, c) = (r.range(0, 0x10000), r.range(0, 0x10000), r.range(0, 0x10000));
            match len {
                48 => format!("2001:db8:{a:x}::/48"),
                56 => format!("2001:db8:{a:x}:{:x}::/56", b & 0xff00),
                64 => format!("2001:db8:{a:x}:{b:x}::/64"),
                _ => format!("2001:db8:{a:x}:{b:x}::{c:x}/128"),
            }
        } else {
            let (a, b, c) = (r.range(0, 256), r.range(0, 256), r.range(0, 256));
            match r.range(0, 4) {
                0 => format!("10.{a}.{b}.0/24"),
                1 => format!("10.{a}.{b}.128/25"),
                2 => format!("10.{a}.{}.0/22", b & 0xfc),
                _ => format!("10.{a}.{b}.{c}/32"),
            }
        };
        let _ = writeln!(s, "dst = \"{dst}\"");
        if r.range(0, 50) == 0 {
            let _ = writeln!(s, "src = \"{}\"", if v6 { "2001:db8:ffff::/48" } else { "192.0.2.0/25" });
        }
        match r.range(0, 20) {
            0 => {
                let (proto, echo) = if v6 { ("icmpv6", 128) } else { ("icmp", 8) };
                let _ = writeln!(s, "protocol = \"{proto}\"\nicmp_type = {echo}");
            }
            1..=12 => {
                let p = r.range(1, 60_000);
                if r.range(0, 3) == 0 {
                    let _ = writeln!(s, "protocol = \"tcp\"\nports = \"{p}-{}\"", p + r.range(1, 1000));
                } else {
                    let _ = writeln!(s, "protocol = \"tcp\"\nports = \"{p}\"");
                }
            }
            13..=17 => {
                let _ = writeln!(s, "protocol = \"udp\"\nports = \"{}\"", r.range(1, 65_535));
            }
            _ => {}
        }
    }
    s
}

/// Adversarial: every rule a distinct /32 source x /32 destination (IPv4).
pub fn src_dst_pairs(n: usize) -> String {
    let mut s = String::from("default_policy = \"allow\"\n");
    for i in 0..n {
        let (a, b) = ((i >> 8) & 0xff, i & 0xff);
        let _ = write!(s, "[[rule]]\naction = \"deny\"\nsrc = \"10.1.{a}.{b}\"\ndst = \"10.2.{a}.{b}\"\n");
    }
    s
}

/// Adversarial: deep nesting: destination prefixes /0 through /32 along one
/// address, each with several port rules, repeated over `n / 33` addresses.
pub fn nested(n: usize) -> String {
    let mut s = String::from("default_policy = \"deny\"\n");
    let mut i = 0;
    'outer: for base in 0u32.. {
        let addr = 0x0a00_0000u32 | (base.wrapping_mul(2_654_435_761) & 0x00ff_ffff);
        for len in 0..=32u32 {
            if i == n {
                break 'outer;
            }
            let net = if len == 0 { 0 } else { addr & (u32::MAX << (32 - len)) };
            let ip = std::net::Ipv4Addr::from(net);
            let _ = write!(s, "[[rule]]\ndst = \"{ip}/{len}\"\nprotocol = \"tcp\"\nports = \"{}-{}\"\n", 1000 + len, 2000 + len * 7);
            i += 1;
        }
    }
    s
}

/// Adversarial, against the port-interval stage: overlapping TCP port ranges up
/// to 4,000 ports wide, allow and deny mixed, on four destinations.
pub fn port_ranges(n: usize) -> String {
    let mut s = String::from("default_policy = \"deny\"\n");
    let mut rng = Rng::new(11);
    for i in 0..n {
        let lo = rng.range(1, 61_000);
        let hi = lo + rng.range(0, 4_000);
        let action = if rng.range(0, 2) == 0 { "allow" } else { "deny" };
        let _ = write!(s, "[[rule]]\naction = \"{action}\"\ndst = \"10.3.0.{}\"\nprotocol = \"tcp\"\nports = \"{lo}-{hi}\"\n", i % 4);
    }
    s
}

/// Adversarial, against the linter's neighbour walk: every rule a distinct /32
/// source to one destination, all ports (no two rules overlap, but every rule
/// sits in the same destination prefix and port interval as all the others).
pub fn source_fan(n: usize) -> String {
    let mut s = String::from("default_policy = \"allow\"\n");
    for i in 0..n {
        let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let _ = write!(s, "[[rule]]\naction = \"deny\"\nsrc = \"10.{a}.{b}.{c}\"\ndst = \"10.4.0.0/16\"\nprotocol = \"tcp\"\n");
    }
    s
}

/// The `k`-th address of the benchmark's blocklist: distinct /32s spread over
/// 10.0.0.0/8 (an odd multiplier permutes the 2^24 host numbers).
pub fn blocklist_addr(k: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0a00_0000 | (k.wrapping_mul(2_654_435_761) & 0x00ff_ffff))
}

/// A set file of `n` distinct /32s (at most 2^24), one a line after a
/// FireHOL-style header: the benchmark's large blocklist.
pub fn blocklist(n: usize) -> String {
    let mut s = String::with_capacity(n * 14 + 64);
    let _ = writeln!(s, "#\n# benchmark blocklist: {n} addresses\n#");
    for k in 0..n.min(1 << 24) as u32 {
        let _ = writeln!(s, "{}", blocklist_addr(k));
    }
    s
}

/// A generator of `n` rules.
pub type Generator = fn(usize) -> String;

/// The adversarial shapes by name (`egress-bench --generate N SHAPE`, part 1b).
pub const ADVERSARIAL: [(&str, Generator); 4] = [("pairs", src_dst_pairs), ("nested", nested), ("ports", port_ranges), ("fan", source_fan)];

#[cfg(test)]
mod tests {
    #[test]
    fn generated_sets_are_valid_and_compile() {
        for (name, text) in [
            ("realistic", super::realistic(3000, 100, 1)),
            ("pairs", super::src_dst_pairs(2000)),
            ("nested", super::nested(500)),
            ("ports", super::port_ranges(2000)),
            ("fan", super::source_fan(2000)),
        ] {
            let rs = crate::rules::parse(name, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::compile::compile(&rs).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
