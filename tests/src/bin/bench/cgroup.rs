//! Part 1f: workload scope (cgroups). What the cgroup_skb hook adds per packet
//! beside the TC hook's figure, on the same rule set (BPF_PROG_TEST_RUN, one
//! flow hot and a new flow every packet), and what a connect() costs with and
//! without the cgroup's hooks (a real process in a cgroup, connect() to a port
//! on lo that nobody listens on, so each call is answered at once).

use std::fmt::Write as _;

use egress::{
    compile,
    dataplane::{LoadOptions, Loaded},
    rules, ruleset_gen,
};
use egress_common::{CGROUP_PASS_PROGRAM_NAME, CGROUP_SKB_PROGRAM_NAME, PASS_PROGRAM_NAME, classifier_program};
use egress_tests::cgroup::{Client, TestCgroup};

use crate::{flow_packet, flows_for, median, spread, spread_p, testrun::named};

fn run_skb(l: &mut Loaded, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    let r = match named(l, name)? {
        aya::programs::Program::SchedClassifier(p) => p.test_run(opts)?,
        aya::programs::Program::CgroupSkb(p) => p.test_run(opts)?,
        _ => anyhow::bail!("{name}: not a TC or cgroup_skb program"),
    };
    Ok(r.duration.as_nanos() as f64)
}

/// The client binary beside this one (target/release/egress-cgroup-client).
fn client_bin() -> anyhow::Result<String> {
    let me = std::env::current_exe()?;
    let c = me.with_file_name("egress-cgroup-client");
    anyhow::ensure!(c.exists(), "{} missing (cargo build --release -p egress-tests)", c.display());
    Ok(c.display().to_string())
}

/// Mean ns of a connect() from a process in a fresh cgroup, with `rules` on
/// the cgroup (None: no egress there).
fn connect_ns(rules: Option<&str>, port: u16, n: u32) -> anyhow::Result<f64> {
    let ns = format!("egb-cg-{}", std::process::id());
    let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).stderr(std::process::Stdio::null()).status();
    egress_tests::sh(&["ip", "netns", "add", &ns])?;
    let out = (|| -> anyhow::Result<f64> {
        egress_tests::sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        egress_tests::sh(&["ip", "-n", &ns, "addr", "add", "192.0.2.1/24", "dev", "lo"])?;
        let cg = TestCgroup::new("bench")?;
        if let Some(r) = rules {
            let f = egress_tests::temp_file("cg-bench.toml", r);
            let o = std::process::Command::new(egress_tests::egress_bin())
                .args(["apply", "--cgroup", cg.as_str(), "--rules", f.to_str().unwrap_or_default()])
                .output()?;
            anyhow::ensure!(o.status.success(), "apply --cgroup: {}", String::from_utf8_lossy(&o.stderr));
        }
        let mut c = Client::start(&client_bin()?, &cg.path, &ns)?;
        let _ = c.cmd(&format!("connects 192.0.2.1 {port} 200"));
        let a = c.cmd(&format!("connects 192.0.2.1 {port} {n}"));
        a.strip_prefix("ns ").and_then(|v| v.parse().ok()).ok_or_else(|| anyhow::anyhow!("client said {a:?}"))
    })();
    let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).stderr(std::process::Stdio::null()).status();
    out
}

pub(crate) fn cgroup_part(n: usize, rounds: usize, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 1f: workload scope (cgroups)");
    let c = compile::compile(&rules::parse("bench.toml", &ruleset_gen::realistic(n, flows_for(n), 7))?)?;
    let mut tc = Loaded::with_options(&c, &LoadOptions::default())?;
    let mut cg = Loaded::with_options(&c, &LoadOptions { cgroup: Some((1, 0, true)), has_eth: false, ..LoadOptions::default() })?;
    {
        let p: &mut aya::programs::SchedClassifier = named(&mut tc, PASS_PROGRAM_NAME)?.try_into()?;
        p.load()?;
        let p: &mut aya::programs::CgroupSkb = named(&mut cg, CGROUP_PASS_PROGRAM_NAME)?.try_into()?;
        p.load()?;
    }
    let entry = classifier_program(false, false, false);
    let mut s: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..rounds {
        for v6 in [false, true] {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            let hot = flow_packet(v6, 0);
            let b = run_skb(&mut tc, PASS_PROGRAM_NAME, &hot, 100_000)?;
            s.entry(format!("{fam} tc hot")).or_default().push(run_skb(&mut tc, entry, &hot, 100_000)? - b);
            let b = run_skb(&mut cg, CGROUP_PASS_PROGRAM_NAME, &hot, 100_000)?;
            s.entry(format!("{fam} cgroup hot")).or_default().push(run_skb(&mut cg, CGROUP_SKB_PROGRAM_NAME, &hot, 100_000)? - b);
        }
    }
    let _ = writeln!(
        md,
        "\n## 1f. Workload scope: cgroups ({n} realistic rules; BPF_PROG_TEST_RUN, added over an empty program of the same hook)\n\n\
         | family | case | TC (tc-egress) | cgroup_skb (cgroup egress) |\n| --- | --- | --- | --- |"
    );
    for fam in ["IPv4", "IPv6"] {
        let mut a = s.remove(&format!("{fam} tc hot")).unwrap_or_default();
        let mut b = s.remove(&format!("{fam} cgroup hot")).unwrap_or_default();
        let _ = writeln!(
            md,
            "| {fam} | 1 flow, hot | {:+.0} ns ({}) | {:+.0} ns ({}) |",
            median(&mut a),
            spread(&a),
            median(&mut b),
            spread(&b)
        );
    }
    // connect() latency: no egress on the cgroup; a rule set whose hooks judge
    // and allow the call; one that refuses it (EPERM).
    let allow = "default_policy = \"allow\"\n[[rule]]\nname = \"no-discard\"\naction = \"deny\"\nprotocol = \"tcp\"\nports = \"9\"\n";
    let calls = 5_000;
    let mut v: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        v[0].push(connect_ns(None, 7, calls)? / 1000.0);
        v[1].push(connect_ns(Some(allow), 7, calls)? / 1000.0);
        v[2].push(connect_ns(Some(allow), 9, calls)? / 1000.0);
    }
    let _ = writeln!(
        md,
        "\nconnect() from a process in a cgroup to a port on lo nobody listens on ({calls} calls, mean per call, medians of {rounds}):\n\n\
         | cgroup | connect() | spread |\n| --- | --- | --- |"
    );
    let labels = [
        "no egress rules",
        "egress rules, the call allowed (ECONNREFUSED from the stack)",
        "egress rules, the call denied (EPERM from the hook)",
    ];
    for (label, x) in labels.into_iter().zip(v.iter_mut()) {
        let _ = writeln!(md, "| {label} | {:.1} µs | {} |", median(x), spread_p(x, 1));
    }
    Ok(())
}
