//! Part 5: a flood of denied packets under `egress run`. One sender floods a
//! denied UDP port for a while; the service logs the deny events it receives.
//! Reports what the kernel's per-rule rate limit lets through, what it holds
//! back, and the service's CPU time: the events stay within the rate and the
//! service's cost stays bounded, whatever the flood.

use std::{fmt::Write as _, time::Duration};

use egress_tests::{B4, Daemon, Pair, cpu_ticks, in_ns, temp_file};

pub(crate) fn flood_part(secs: u64, md: &mut String) -> anyhow::Result<()> {
    eprintln!("part 5: a flood of denied packets under egress run ({secs} s)");
    let pair = Pair::new("fl")?;
    pair.static_neighbours()?;
    let rules = temp_file(
        "rules.toml",
        "default_policy = \"allow\"\n[[rule]]\nname = \"no-6601\"\naction = \"deny\"\nprotocol = \"udp\"\nports = \"6601\"\n",
    );
    let cfg = temp_file("egress.toml", &format!("[[interface]]\nname = \"{}\"\nrules = \"{}\"\n", pair.a_if, rules.display()));
    let d = Daemon::start(&pair.a, &cfg, &[]);
    d.wait_for("applied", 1, |v| v["message"] == "rules applied");
    let ticks0 = cpu_ticks(d.pid());
    let sent = in_ns(&pair.a, move || -> anyhow::Result<u64> {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        s.set_nonblocking(true)?;
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        while std::time::Instant::now() < end {
            for _ in 0..256 {
                if s.send_to(b"flood", (B4, 6601)).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    })??;
    // Let the service drain what is left, then read everything.
    std::thread::sleep(Duration::from_millis(600));
    let ticks = cpu_ticks(d.pid()) - ticks0;
    let logged = d.log().iter().filter(|v| v["message"] == "denied").count() as u64;
    let c: serde_json::Value = serde_json::from_str(&pair.egress_ok(&["counters", "--iface", &pair.a_if, "--json"]))?;
    let counted = c["rules"][0]["packets"].as_u64().unwrap_or(0);
    let ev = |k: &str| c["events"][k].as_u64().unwrap_or(0);
    let hz = 100.0; // USER_HZ
    let cpu_pct = ticks as f64 / hz / secs as f64 * 100.0;
    let (rate, burst) = (egress_common::DEFAULT_EVENT_RATE as u64, egress_common::DEFAULT_EVENT_BURST as u64);
    let _ = writeln!(md, "## 5. A flood of denied packets under `egress run`\n");
    let _ = writeln!(
        md,
        "| seconds | datagrams sent | per second | counted by the rule | events logged | at most (burst + rate x s) | held back | lost | `egress run` CPU |"
    );
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        md,
        "| {secs} | {sent} | {:.0} | {counted} | {logged} | {} | {} | {} | {cpu_pct:.1}% |",
        sent as f64 / secs as f64,
        burst + rate * (secs + 1),
        ev("suppressed"),
        ev("lost")
    );
    let _ = writeln!(
        md,
        "\nOne sender (a plain `send_to` loop in a namespace) floods a denied UDP port; default `[events]` (rate {rate}, burst {burst}). The kernel's per-rule limit holds back all but a few events, so `egress run` wakes every 200 ms to log a handful of lines whatever the flood; its CPU time is user + system over the whole flood. Every datagram is still counted by its rule.\n"
    );
    eprintln!("flood: {sent} sent, {counted} counted, {logged} events logged, {cpu_pct:.1}% CPU");
    Ok(())
}
