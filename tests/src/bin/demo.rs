//! `cargo xtask demo`: apply examples/demo.toml on the client side of a fresh
//! namespace pair, send real traffic, print what got through and the counters.

use std::process::ExitCode;

use egress_tests::{Pair, is_root};

/// The embedded default: the example rule file shipped in the repository.
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo.toml");

fn main() -> ExitCode {
    if !is_root() {
        eprintln!("error: the demo creates network namespaces and loads eBPF: run it as root");
        return ExitCode::from(1);
    }
    let pair = match Pair::new("demo") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: create the demo namespaces: {e:#}");
            return ExitCode::from(1);
        }
    };
    println!("namespaces {} (client, 192.0.2.1 / 2001:db8:1::1) and {} (server, .2 / ::2), veth {}", pair.a, pair.b, pair.a_if);
    println!("$ egress apply --iface {} --rules examples/demo.toml", pair.a_if);
    let rules = std::fs::canonicalize(RULES).unwrap_or_else(|_| RULES.into());
    let o = pair.apply_file(&rules);
    print!("{}", String::from_utf8_lossy(&o.stdout));
    if !o.status.success() {
        eprint!("{}", String::from_utf8_lossy(&o.stderr));
        return ExitCode::from(1);
    }
    println!("\ntraffic from client to server:");
    let n = 5;
    for (what, v6, port) in [
        ("udp/53   (dns-to-resolver: allow)", false, 53),
        ("udp/5001 (no-high-udp: deny)", false, 5001),
        ("udp/9999 (default: allow)", false, 9999),
        ("udp6/5001 (no-high-udp: deny)", true, 5001),
    ] {
        println!("  {what:<34} {}/{n} datagrams arrived", pair.udp(v6, port, n));
    }
    for (what, v6, port) in
        [("tcp/25   (no-smtp: deny)", false, 25), ("tcp6/25  (no-smtp: deny)", true, 25), ("tcp/80   (default: allow)", false, 80)]
    {
        println!("  {what:<34} {}", if pair.tcp(v6, port) { "connected" } else { "blocked" });
    }
    println!("  {:<34} {}/{n} replies", "ping     (no-ping: deny)", pair.ping(false, n));
    println!("  {:<34} {}/{n} replies", "ping6    (no-ping6: deny)", pair.ping(true, n));
    println!("\n$ egress counters --iface {}", pair.a_if);
    print!("{}", pair.egress_ok(&["counters", "--iface", &pair.a_if]));
    println!("\ncleaning up (detach, delete namespaces)");
    drop(pair);
    ExitCode::SUCCESS
}
