//! Part 1e: rules by name (BPF_PROG_TEST_RUN). What a first packet to a
//! learned address costs (the hand-over to the split program, the full lookup
//! and the learned-name lookup) and a cached one (the deadline and epoch
//! checks), whether the cached path stays where it is with rules by name in the file,
//! and what learning from an answer with 1 and with 16 A records costs in the
//! companion program. Then real traffic: 10,000 lookups a second through the
//! filter, answers counted.

use std::{fmt::Write as _, net::Ipv4Addr};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{Program, TestRun as _, TestRunOptions},
};
use egress::{
    compile,
    dataplane::{DnsLoad, LoadOptions, Loaded},
    packet::{self, Shape},
    reference::{L4, PacketMeta},
    rules, ruleset_gen,
};
use egress_common::{
    LearnBucket, LearnWay, MAP_DNS_LEARN_V4, MAP_DNS_QUERIES, PASS_PROGRAM_NAME, QueryKey, QueryValue, TRACK_PROGRAM_NAME,
    classifier_program, dns_name_hash, dns_question, learn_bucket, learn_seal,
};
use egress_tests::A4;

use crate::{flow_packet, flows_for, median, spread, testrun::named, testrun::run_ns};

const KEY: [u64; 2] = [0x5eed, 0xfeed];
const LEARNED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);

/// An answer from 192.0.2.53:53 to 192.0.2.1:40000 for `s0.names.example` with
/// `n` A records.
fn answer_frame(n: u8) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, n, 0, 0, 0, 0];
    for l in ["s0", "names", "example"] {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    for i in 0..n {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 203, 0, 113, 100 + i]);
    }
    let udp = (8 + m.len()) as u16;
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45, 0];
    f.extend_from_slice(&(20 + udp).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 53, 192, 0, 2, 1, 0, 53]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&udp.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&m);
    f
}

fn pending_query(l: &mut Loaded) -> anyhow::Result<()> {
    let labels: [&[u8]; 3] = [b"s0", b"names", b"example"];
    let q = dns_question(dns_name_hash(labels.iter().copied(), KEY[0], KEY[1]), 1, 1);
    let mut client = [0u8; 16];
    client[..4].copy_from_slice(&[192, 0, 2, 1]);
    let mut resolver = [0u8; 16];
    resolver[..4].copy_from_slice(&[192, 0, 2, 53]);
    let k = QueryKey { client, resolver, client_port: 40000u16.to_be_bytes(), id: [0x12, 0x34], v6: 0 };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let sent = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let m = l.ebpf.map_mut(MAP_DNS_QUERIES).ok_or_else(|| anyhow::anyhow!("no DNS_QUERIES"))?;
    let mut h: HashMap<&mut MapData, QueryKey, QueryValue> = HashMap::try_from(m)?;
    h.insert(k, QueryValue { question: q, sent }, 0)?;
    Ok(())
}

/// One run of `prog` on `frame` (repeat 1), after `before`.
fn once(l: &mut Loaded, name: &str, frame: &[u8], query: bool) -> anyhow::Result<f64> {
    if query {
        pending_query(l)?;
    }
    let p: &mut Program = named(l, name)?;
    let opts = TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() };
    let r = match p {
        Program::SchedClassifier(p) => p.test_run(opts)?,
        _ => anyhow::bail!("not a TC program"),
    };
    Ok(r.duration.as_nanos() as f64)
}

/// Real traffic: `rate` queries a second for `secs` seconds (each for a name
/// never asked before) from namespace a to dnsmasq in b, with egress filtering
/// (`rules`) or not (None); (sent, answered, answers learned from).
fn lookups(rate: u32, secs: u32, rules: Option<&str>) -> anyhow::Result<(u32, u32, u64)> {
    use egress_tests::dns::{DnsServer, RESOLVER, Record, query};
    use std::time::{Duration, Instant};
    let p = egress_tests::Pair::new("dnsrate")?;
    let _dns = DnsServer::start(&p, &[Record::Domain("load.example", Ipv4Addr::new(198, 51, 100, 9).into())], &[])?;
    if let Some(r) = rules {
        p.apply_ok(r);
    }
    let total = rate * secs;
    let sock = egress_tests::in_ns_io(&p.a, || std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let rx = sock.try_clone()?;
    let counter = std::thread::spawn(move || {
        let mut seen = vec![false; total as usize];
        let mut b = [0u8; 512];
        while let Ok(n) = rx.recv(&mut b) {
            if n >= 2 {
                let id = u16::from_be_bytes([b[0], b[1]]) as usize;
                // ids wrap at 65536; totals here stay below it.
                if let Some(s) = seen.get_mut(id) {
                    *s = true;
                }
            }
        }
        seen.iter().filter(|s| **s).count() as u32
    });
    let start = Instant::now();
    for i in 0..total {
        // Paced: query i leaves at i / rate seconds.
        let due = Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        while start.elapsed() < due {
            std::hint::spin_loop();
        }
        let _ = sock.send_to(&query(i as u16, &format!("q{i}.load.example"), 1), (RESOLVER, 53));
    }
    let answered = counter.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let learned = match rules {
        Some(_) => {
            let v: serde_json::Value = serde_json::from_str(&p.egress_ok(&["counters", "--iface", &p.a_if, "--json"]))?;
            v["dns"]["answers_learned_from"].as_u64().unwrap_or(0)
        }
        None => 0,
    };
    Ok((total, answered, learned))
}

/// `lookups` with and without egress, as a table.
fn lookups_part(md: &mut String) -> anyhow::Result<()> {
    let rules = "default_policy = \"deny\"\n[dns]\nresolvers = [\"192.0.2.2\"]\n\
                 [[rule]]\nname = \"dns\"\naction = \"allow\"\nprotocol = \"udp\"\ndst = \"192.0.2.2\"\nports = \"53\"\n\
                 [[rule]]\nname = \"web\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"443\"\ndst_fqdn = \"*.load.example\"\n";
    let _ = writeln!(
        md,
        "\nLookups through the filter: 10,000 a second for 3 s, each for a name never asked before (q0.load.example, q1...), \
         from a UDP socket in the client namespace to dnsmasq in the server's.\n\n| filter | sent | answered | answers learned from |\n| --- | --- | --- | --- |"
    );
    for (label, r) in [("none", None), ("egress (rules by name)", Some(rules))] {
        let (sent, answered, learned) = lookups(10_000, 3, r)?;
        let l = if r.is_some() { learned.to_string() } else { "-".into() };
        let _ = writeln!(md, "| {label} | {sent} | {answered} | {l} |");
    }
    Ok(())
}

pub(crate) fn dns_part(n: usize, rounds: usize, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 1e: rules by name");
    let mut text = ruleset_gen::realistic(n, flows_for(n), 7);
    for i in 0..100 {
        text.push_str(&format!(
            "[[rule]]\nname = \"by-name-{i}\"\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"443\"\ndst_fqdn = \"s{i}.names.example\"\n"
        ));
    }
    text.push_str("[dns]\nresolvers = [\"192.0.2.53\"]\n");
    let rs = rules::parse("bench.toml", &text)?;
    let c = compile::compile(&rs)?;
    let plain = compile::compile(&rules::parse("bench.toml", &ruleset_gen::realistic(n, flows_for(n), 7))?)?;
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/egress-bench-dns-{}", std::process::id()));
    let dns = DnsLoad { config: rs.dns.clone().unwrap_or_default(), key: KEY, dir: pins.clone() };
    let measured = (|| -> anyhow::Result<String> {
        let mut l = Loaded::with_options(&c, &LoadOptions { dns: Some(dns.clone()), ..LoadOptions::default() })?;
        // The same rule set with the flow cache off: every packet is a first packet.
        let mut m = Loaded::with_options(&c, &LoadOptions { dns: Some(dns), flow_cache: 0, ..LoadOptions::default() })?;
        let mut p = Loaded::with_options(&plain, &LoadOptions::default())?;
        for x in [&mut l, &mut m, &mut p] {
            let e: &mut aya::programs::SchedClassifier = named(x, PASS_PROGRAM_NAME)?.try_into()?;
            e.load()?;
        }
        // LEARNED learned for s0.names.example (written as the program would).
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&LEARNED.octets());
        let id = rules::pattern_id("s0.names.example");
        let expires = u64::MAX / 2;
        let way = LearnWay { addr, expires, pattern: id, name: 0, seal: learn_seal(&addr, expires, id, 0) };
        {
            let m = l.ebpf.map_mut(MAP_DNS_LEARN_V4).ok_or_else(|| anyhow::anyhow!("no DNS_LEARN_V4"))?;
            let mut a: Array<&mut MapData, LearnBucket> = Array::try_from(m)?;
            let i = learn_bucket(&addr) & (a.len() - 1);
            let mut b = LearnBucket::default();
            b.ways[0] = way;
            a.set(i, b, 0)?;
        }
        let to_learned =
            packet::build(&PacketMeta { src: A4.into(), dst: LEARNED.into(), proto: 6, l4: L4::Ports { dport: 443 } }, &Shape::default());
        let hot = flow_packet(false, 0);
        // A stateless rule set by name attaches the call-free entry point (tail
        // calls into the split one on a cache miss), as without names.
        let entry = classifier_program(false, false, false);
        let mut s: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        for _ in 0..rounds {
            let pass = run_ns(named(&mut l, PASS_PROGRAM_NAME)?, &to_learned, 100_000)?;
            s.entry("learned-first").or_default().push(run_ns(named(&mut m, entry)?, &to_learned, 100_000)? - pass);
            s.entry("learned").or_default().push(run_ns(named(&mut l, entry)?, &to_learned, 100_000)? - pass);
            s.entry("hot-dns").or_default().push(run_ns(named(&mut l, entry)?, &hot, 100_000)? - pass);
            s.entry("hot-plain").or_default().push(run_ns(named(&mut p, entry)?, &hot, 100_000)? - pass);
            for (key, k) in [("answer-1", 1u8), ("answer-16", 16)] {
                let f = answer_frame(k);
                let mut v: Vec<f64> = Vec::new();
                for _ in 0..300 {
                    let t = once(&mut l, TRACK_PROGRAM_NAME, &f, true)?;
                    let b = once(&mut l, PASS_PROGRAM_NAME, &f, false)?;
                    v.push(t - b);
                }
                s.entry(key).or_default().push(median(&mut v));
            }
        }
        let mut out = String::new();
        let row = |out: &mut String, what: &str, v: &mut Vec<f64>| {
            let _ = writeln!(out, "| {what} | {:+.0} ns | {} |", median(v), spread(v));
        };
        let _ = writeln!(
            out,
            "\n## 1e. Rules by name ({n} realistic rules + 100 rules by name, IPv4, BPF_PROG_TEST_RUN, added over an empty program)\n\n\
             | case | added ns/packet | spread |\n| --- | --- | --- |"
        );
        for (label, key) in [
            (
                "a first packet to a learned address (flow cache off: hand-over to the split program, full lookup, learned names)",
                "learned-first",
            ),
            ("a cached flow to a learned address", "learned"),
            ("a cached flow, rule set with rules by name", "hot-dns"),
            ("a cached flow, the same rules without rules by name", "hot-plain"),
            ("learning from an answer with 1 A record (companion)", "answer-1"),
            ("learning from an answer with 16 A records (companion)", "answer-16"),
        ] {
            row(&mut out, label, s.get_mut(key).unwrap_or(&mut Vec::new()));
        }
        Ok(out)
    })();
    let _ = std::fs::remove_dir_all(&pins);
    md.push_str(&measured?);
    lookups_part(md)
}
