//! The kernel's DNS answer parser held to hickory-proto's (root): a DNS message
//! arrives from a listed resolver to a query that was seen (the pending entry
//! is written from hickory's reading of the question), through the companion
//! program (BPF_PROG_TEST_RUN); what the program learned must be exactly the
//! A/AAAA records of the answer section that hickory reads, when hickory reads
//! an answer the program is meant to learn from, and nothing otherwise. Shared
//! by the `dns` fuzz target and the integration test `tests/tests/dns_parser.rs`.

use std::{collections::BTreeMap, net::IpAddr};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions},
};
use egress::{
    compile,
    dataplane::{DnsLoad, LoadOptions, Loaded},
    rules,
};
use egress_common::{
    DS_LEARNED, LearnBucket, MAP_DNS_LEARN_V4, MAP_DNS_LEARN_V6, MAP_DNS_QUERIES, MAP_DNS_STATS, QueryKey, QueryValue, dns_name_hash,
    dns_question, learn_bucket, learn_seal,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, RData, RecordType},
};

const RULES: &str = r#"default_policy = "allow"
[dns]
resolvers = ["192.0.2.53", "2001:db8::53"]
min_ttl = 1
max_ttl = 86400
max_addresses = 4096
[[rule]]
name = "web"
action = "allow"
protocol = "tcp"
ports = "443"
dst_fqdn = ["*.example", "exact.test"]
"#;
const PATTERNS: [&str; 2] = ["*.example", "exact.test"];
const CLIENT_PORT: u16 = 40000;
const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

pub struct Diff {
    loaded: Loaded,
    dir: std::path::PathBuf,
}

impl Drop for Diff {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_coarse() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Ethernet + IP + UDP from the resolver's port 53 to the client's port.
fn frame(msg: &[u8], v6: bool) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    let udp_len = (8 + msg.len()) as u16;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        f.extend_from_slice(&resolver(true));
        f.extend_from_slice(&client(true));
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&(20 + udp_len).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&resolver(false)[..4]);
        f.extend_from_slice(&client(false)[..4]);
    }
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(msg);
    f
}

fn resolver(v6: bool) -> [u8; 16] {
    let mut a = [0u8; 16];
    if v6 {
        a = "2001:db8::53".parse::<std::net::Ipv6Addr>().map(|x| x.octets()).unwrap_or_default();
    } else {
        a[..4].copy_from_slice(&[192, 0, 2, 53]);
    }
    a
}

fn client(v6: bool) -> [u8; 16] {
    let mut a = [0u8; 16];
    if v6 {
        a = "2001:db8::1".parse::<std::net::Ipv6Addr>().map(|x| x.octets()).unwrap_or_default();
    } else {
        a[..4].copy_from_slice(&[192, 0, 2, 1]);
    }
    a
}

/// Whether a pattern matches a name given as labels: `*.suffix` any name with
/// more labels whose last ones are the suffix's, an exact name the same labels
/// (ASCII case ignored).
fn pattern_matches_labels(pattern: &str, labels: &[&[u8]]) -> bool {
    let (wild, name) = match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let want: Vec<&[u8]> = name.split('.').map(str::as_bytes).collect();
    if labels.len() < want.len() + usize::from(wild) || (!wild && labels.len() != want.len()) {
        return false;
    }
    labels[labels.len() - want.len()..].iter().zip(&want).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// Whether the question name in the raw message is written without a
/// compression pointer (the program accepts no pointer there).
fn plain_question(msg: &[u8]) -> bool {
    let mut i = 12;
    while let Some(&b) = msg.get(i) {
        match b {
            0 => return true,
            1..=63 => i += 1 + b as usize,
            _ => return false,
        }
    }
    false
}

impl Diff {
    pub fn new() -> Diff {
        let rs = rules::parse("dnsdiff.toml", RULES).unwrap_or_else(|e| panic!("{e}"));
        let c = compile::compile(&rs).unwrap_or_else(|e| panic!("{e}"));
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/egress-dnsdiff-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dns = DnsLoad { config: rs.dns.clone().unwrap_or_default(), key: KEY, dir: dir.clone() };
        let opts = LoadOptions { flow_cache: 0, dns: Some(dns), ..LoadOptions::default() };
        let loaded = Loaded::with_options(&c, &opts).unwrap_or_else(|e| panic!("load: {e}"));
        Diff { loaded, dir }
    }

    pub fn stats(&self) -> Vec<u64> {
        let m = self.loaded.ebpf.map(MAP_DNS_STATS).unwrap_or_else(|| panic!("no DNS_STATS"));
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(m).unwrap_or_else(|e| panic!("{e}"));
        (0..egress_common::DNS_STATS_LEN).map(|i| a.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)).collect()
    }

    fn learned_count(&self) -> u64 {
        self.stats()[DS_LEARNED as usize]
    }

    /// The live learned entries of `addr`'s bucket for `addr`: their expiry
    /// (ns); they are cleared.
    fn take(&mut self, addr: &IpAddr) -> Vec<u64> {
        let (name, a) = match addr {
            IpAddr::V4(v) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v.octets());
                (MAP_DNS_LEARN_V4, a)
            }
            IpAddr::V6(v) => (MAP_DNS_LEARN_V6, v.octets()),
        };
        let m = self.loaded.ebpf.map_mut(name).unwrap_or_else(|| panic!("no {name}"));
        let mut arr: Array<&mut MapData, LearnBucket> = Array::try_from(m).unwrap_or_else(|e| panic!("{e}"));
        let i = learn_bucket(&a) & (arr.len() - 1);
        let mut b = arr.get(&i, 0).unwrap_or_default();
        let mut out = Vec::new();
        for w in b.ways.iter_mut() {
            if w.addr == a && w.expires != 0 && w.seal == learn_seal(&w.addr, w.expires, w.pattern, w.name) {
                out.push(w.expires);
                // Only this address's ways: another one of the message may share the bucket.
                *w = Default::default();
            }
        }
        let _ = arr.set(i, b, 0);
        out
    }

    /// Runs `msg` as an answer through the program and checks what it learned.
    pub fn check(&mut self, msg: &[u8], v6: bool) {
        let parsed = Message::from_vec(msg).ok();
        // The pending query, as hickory reads the question.
        let mut qk =
            QueryKey { client: client(v6), resolver: resolver(v6), client_port: CLIENT_PORT.to_be_bytes(), id: [0; 2], v6: v6 as u32 };
        if msg.len() >= 2 {
            qk.id = [msg[0], msg[1]];
        }
        let mut matches = false;
        if let Some(q) = parsed.as_ref().and_then(|m| m.queries.first()) {
            let labels: Vec<&[u8]> = q.name().iter().collect();
            let h = dns_name_hash(labels.iter().copied(), KEY[0], KEY[1]);
            let v = QueryValue { question: dns_question(h, u16::from(q.query_type()), u16::from(q.query_class())), sent: now_coarse() };
            let m = self.loaded.ebpf.map_mut(MAP_DNS_QUERIES).unwrap_or_else(|| panic!("no DNS_QUERIES"));
            let mut queries: HashMap<&mut MapData, QueryKey, QueryValue> = HashMap::try_from(m).unwrap_or_else(|e| panic!("{e}"));
            let _ = queries.insert(qk, v, 0);
            // Label by label (a label may hold any byte, a dot included).
            matches = PATTERNS.iter().any(|p| pattern_matches_labels(p, &labels));
        }
        // What the program should learn: the A/AAAA records of the answer
        // section (at most 16), with their longest TTL, of an answer it takes.
        let mut want: BTreeMap<IpAddr, u64> = BTreeMap::new();
        if let Some(m) = &parsed
            && m.metadata.message_type == MessageType::Response
            && !m.metadata.truncation
            && m.metadata.op_code == OpCode::Query
            && m.metadata.response_code == ResponseCode::NoError
            && m.queries.len() == 1
            && msg.len() <= egress_common::DNS_BUF
            && plain_question(msg)
            && matches
        {
            let mut n = 0;
            for r in &m.answers {
                if r.dns_class != DNSClass::IN || !matches!(r.record_type(), RecordType::A | RecordType::AAAA) {
                    continue;
                }
                let addr = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                if n == egress_common::DNS_MAX_RECORDS {
                    break;
                }
                n += 1;
                let ttl = u64::from(r.ttl).clamp(1, 86_400);
                let e = want.entry(addr).or_insert(0);
                *e = (*e).max(ttl);
            }
        }
        let before = self.learned_count();
        let t0 = now_coarse();
        let f = frame(msg, v6);
        let prog = self.loaded.track_program().unwrap_or_else(|e| panic!("{e}"));
        let _ = prog.test_run(TestRunOptions { data_in: Some(&f), ..Default::default() });
        let learned = self.learned_count() - before;
        for (addr, ttl) in &want {
            let got = self.take(addr);
            assert_eq!(got.len(), 1, "{addr} learned {} times (v6 {v6}, DNS_STATS {:?}) from {msg:02x?}", got.len(), self.stats());
            let expect = t0 + ttl * 1_000_000_000;
            assert!(got[0].abs_diff(expect) < 2_000_000_000, "{addr}: expires {} s off from {msg:02x?}", got[0] as i128 - expect as i128);
        }
        assert_eq!(learned, want.len() as u64, "learned {learned}, hickory reads {want:?} from {msg:02x?}");
        // Queries are answered once: remove what is left.
        let m = self.loaded.ebpf.map_mut(MAP_DNS_QUERIES).unwrap_or_else(|| panic!("no DNS_QUERIES"));
        let mut queries: HashMap<&mut MapData, QueryKey, QueryValue> = HashMap::try_from(m).unwrap_or_else(|e| panic!("{e}"));
        let _ = queries.remove(&qk);
    }
}

/// A DNS answer built from fuzz or random bytes: a question from a few names
/// (some matching the patterns), answer records of several types with owner
/// names compressed or written out, flags that sometimes make it unacceptable.
pub fn answer_from(bytes: &[u8]) -> Vec<u8> {
    let mut it = bytes.iter().copied().chain(std::iter::repeat(0));
    let mut next = move || it.next().unwrap_or(0);
    let names = ["a.example", "WWW.Sub.Example", "exact.test", "x.exact.test", "example", "other.org", "a-b.c.example."];
    let q = names[next() as usize % names.len()];
    let flags: u16 = match next() % 8 {
        0 => 0x0180, // not a response
        1 => 0x8380, // truncated
        2 => 0x8183, // NXDOMAIN
        3 => u16::from_be_bytes([next(), next()]),
        _ => 0x8180,
    };
    let records = next() % 20;
    let mut m = vec![next(), next()];
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&u16::from(records).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    if next() % 16 == 0 {
        // A pointer in the question: not accepted.
        m.extend_from_slice(&[0xc0, 12]);
    } else {
        for l in q.trim_end_matches('.').split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
    }
    m.extend_from_slice(&[0, 1, 0, 1]);
    for _ in 0..records {
        match next() % 3 {
            0 => m.extend_from_slice(&[0xc0, 12]),
            1 => {
                m.extend_from_slice(&[5, b'o', b'w', b'n', b'e', b'r', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0]);
            }
            _ => m.push(0),
        }
        let ttl = u32::from_be_bytes([0, 0, next(), next()]);
        let (ty, data): (u16, Vec<u8>) = match next() % 5 {
            0 | 1 => (1, vec![198, 51, 100, next()]),
            2 => (28, {
                let mut a = vec![0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                a.push(next());
                a
            }),
            3 => (5, vec![3, b'c', b'd', b'n', 0xc0, 12]),
            _ => (16, vec![3, b'a', b'b', b'c']),
        };
        let class: u16 = if next() % 10 == 0 { 3 } else { 1 };
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&class.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(&data);
    }
    // Now and then a byte flipped or the message cut short.
    match next() % 8 {
        0 if !m.is_empty() => {
            let i = next() as usize % m.len();
            m[i] ^= next() | 1;
        }
        1 => {
            let keep = m.len().saturating_sub(1 + next() as usize % 8);
            m.truncate(keep);
        }
        _ => {}
    }
    m
}
