//! Random rule sets and packets for the differential tests: prefixes that nest
//! and touch, port ranges at their edges, both families, fragments.

use std::net::IpAddr;

use egress::{
    packet::Shape,
    reference::{L4, PacketMeta},
    ruleset_gen::{RANDOM_V4_NETS as V4_NETS, RANDOM_V6_NETS as V6_NETS},
};
use rand::{Rng, rngs::StdRng, seq::SliceRandom};

/// One of `items` (`choose`, so the random streams stay as they were; the
/// pools below are non-empty constants).
fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    match items.choose(rng) {
        Some(v) => *v,
        None => panic!("an empty pool"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("the pool holds a bad address: {s}"))
}

const V4_HOSTS: &[&str] = &[
    "192.0.2.0",
    "192.0.2.7",
    "192.0.2.8",
    "192.0.2.15",
    "192.0.2.63",
    "192.0.2.64",
    "192.0.2.127",
    "192.0.2.128",
    "192.0.2.255",
    "198.51.100.1",
    "198.51.101.200",
    "203.0.113.129",
    "203.0.113.144",
    "233.252.0.1",
    "10.1.2.3",
];
const V6_HOSTS: &[&str] = &[
    "2001:db8:1::7",
    "2001:db8:1::8",
    "2001:db8:1::8000:0:0:1",
    "2001:db8:1:0:c000::1",
    "2001:db8:1:1::1",
    "2001:db8:2::1",
    "2001:db8:ffff::1",
    "fd00::1",
];
const PORT_EDGES: &[u16] = &[0, 1, 52, 53, 54, 79, 80, 443, 1023, 1024, 8080, 65534, 65535];

fn nets(rng: &mut StdRng, pool: &[&str]) -> String {
    let n = rng.gen_range(1..=2);
    let v: Vec<String> = (0..n).map(|_| format!("\"{}\"", pick(rng, pool))).collect();
    format!("[{}]", v.join(", "))
}

/// A random rule file of `n` rules over prefixes that nest and touch, port ranges
/// at the edges, ICMP types and codes, both families.
pub fn rules(rng: &mut StdRng, n: usize) -> String {
    let mut s = format!("default_policy = \"{}\"\n", if rng.gen_bool(0.5) { "allow" } else { "deny" });
    for _ in 0..n {
        s.push_str("[[rule]]\n");
        s.push_str(&format!("action = \"{}\"\n", if rng.gen_bool(0.5) { "allow" } else { "deny" }));
        // Family of the rule's addresses: 0 any, 1 IPv4, 2 IPv6.
        let fam = rng.gen_range(0..3);
        let pool = if fam == 1 { V4_NETS } else { V6_NETS };
        if fam != 0 {
            let (src, dst) = match rng.gen_range(0..3) {
                0 => (true, false),
                1 => (false, true),
                _ => (true, true),
            };
            if src {
                s.push_str(&format!("src = {}\n", nets(rng, pool)));
            }
            if dst {
                s.push_str(&format!("dst = {}\n", nets(rng, pool)));
            }
        }
        let protos: &[&str] = match fam {
            0 => &["all", "tcp", "udp", "icmp", "icmpv6"],
            1 => &["all", "tcp", "udp", "icmp"],
            _ => &["all", "tcp", "udp", "icmpv6"],
        };
        let proto = pick(rng, protos);
        s.push_str(&format!("protocol = \"{proto}\"\n"));
        match proto {
            "tcp" | "udp" if rng.gen_bool(0.25) => {
                // A port list (overlapping, touching or apart), as a TOML list or a comma string.
                let items: Vec<String> = (0..rng.gen_range(2..=4))
                    .map(|_| {
                        let a = pick(rng, PORT_EDGES);
                        let b = pick(rng, PORT_EDGES);
                        if a == b || rng.gen_bool(0.4) { a.to_string() } else { format!("{}-{}", a.min(b), a.max(b)) }
                    })
                    .collect();
                if rng.gen_bool(0.5) {
                    s.push_str(&format!("ports = \"{}\"\n", items.join(",")));
                } else {
                    let l: Vec<String> = items.iter().map(|i| if i.contains('-') { format!("\"{i}\"") } else { i.clone() }).collect();
                    s.push_str(&format!("ports = [{}]\n", l.join(", ")));
                }
            }
            "tcp" | "udp" if rng.gen_bool(0.6) => {
                let a = pick(rng, PORT_EDGES);
                let b = pick(rng, PORT_EDGES);
                let (a, b) = (a.min(b), a.max(b));
                if a == b { s.push_str(&format!("ports = \"{a}\"\n")) } else { s.push_str(&format!("ports = \"{a}-{b}\"\n")) }
            }
            "icmp" | "icmpv6" if rng.gen_bool(0.7) => {
                let t = pick(rng, &[0u8, 3, 8, 128, 129]);
                s.push_str(&format!("icmp_type = {t}\n"));
                if rng.gen_bool(0.4) {
                    s.push_str(&format!("icmp_code = {}\n", rng.gen_range(0..2)));
                }
            }
            _ => {}
        }
    }
    s
}

/// A random packet over hosts at the edges of those prefixes, with fragments,
/// IPv6 extension headers and IPv4 options now and then.
pub fn packet(rng: &mut StdRng) -> (PacketMeta, Shape) {
    let v6 = rng.gen_bool(0.5);
    let hosts = if v6 { V6_HOSTS } else { V4_HOSTS };
    let src = ip(pick(rng, hosts));
    let dst = ip(pick(rng, hosts));
    let proto = pick(rng, &[6u8, 17, 6, 17, if v6 { 58 } else { 1 }, if v6 { 58 } else { 1 }, 47, if v6 { 1 } else { 58 }]);
    let mut shape = Shape::default();
    let fragment = rng.gen_bool(0.1);
    if fragment {
        shape.frag_offset = rng.gen_range(1..100);
    } else if rng.gen_bool(0.1) {
        shape.more_fragments = true;
    }
    if v6 && rng.gen_bool(0.2) {
        shape.ipv6_ext = (0..rng.gen_range(1..4)).map(|_| pick(rng, &[0u8, 43, 60])).collect();
    }
    if !v6 && rng.gen_bool(0.1) {
        shape.ipv4_option_words = rng.gen_range(1..=10);
    }
    let l4 = if fragment {
        L4::None
    } else {
        match proto {
            6 | 17 => L4::Ports { dport: if rng.gen_bool(0.8) { pick(rng, PORT_EDGES) } else { rng.r#gen() } },
            1 if !v6 => L4::Icmp { ty: pick(rng, &[0u8, 3, 8, 11]), code: rng.gen_range(0..2) },
            58 if v6 => L4::Icmp { ty: pick(rng, &[128u8, 129, 135, 1]), code: rng.gen_range(0..2) },
            _ => L4::None,
        }
    };
    (PacketMeta { src, dst, proto, l4 }, shape)
}

/// A random rule file whose `src`/`dst` also name sets (`@s0`, `@s1`: both
/// families, nested and host entries, ranges), with the set files in memory.
pub fn rules_with_sets(rng: &mut StdRng, n: usize) -> (String, egress::sets::InMemory) {
    let mut files = std::collections::HashMap::new();
    let mut header = String::new();
    for k in 0..2 {
        let mut f = String::from("# random set\n");
        // Now and then a larger set (more than the linter scans: it searches those).
        let n = if rng.gen_bool(0.3) { rng.gen_range(20..40) } else { rng.gen_range(0..6) };
        for _ in 0..n {
            match rng.gen_range(0..6) {
                4 => f.push_str(&format!("192.0.2.{}\n", rng.gen_range(0..256))),
                5 => f.push_str(&format!("192.0.2.{}/31\n", rng.gen_range(0..128) * 2)),
                0 => f.push_str(&format!("{}\n", pick(rng, V4_NETS))),
                1 => f.push_str(&format!("{} ; six\n", pick(rng, V6_NETS))),
                2 => {
                    let pool = if rng.gen_bool(0.5) { V4_HOSTS } else { V6_HOSTS };
                    f.push_str(&format!("{}\n", pick(rng, pool)))
                }
                _ => f.push_str("192.0.2.60-192.0.2.70\n"),
            }
        }
        files.insert(format!("s{k}.txt"), f.into_bytes());
        header.push_str(&format!("[[set]]\nname = \"s{k}\"\nfile = \"s{k}.txt\"\n"));
    }
    let text = rules(rng, n);
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let field = ["src = ", "dst = "].into_iter().find(|f| line.starts_with(f));
        match field {
            Some(f) if rng.gen_bool(0.4) => {
                let value = &line[f.len()..];
                let set = format!("\"@s{}\"", rng.gen_range(0..2));
                if rng.gen_bool(0.5) {
                    out.push_str(&format!("{f}{set}\n"));
                } else {
                    let rest = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
                    out.push_str(&format!("{f}[{set}, {rest}]\n"));
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
        if i == 0 {
            out.push_str(&header);
        }
    }
    (out, egress::sets::InMemory(files))
}
