//! A router host between a guest network and the outside, in three namespaces:
//!
//! ```text
//!  guest (g)                router (r)                          outside (o)
//!  gw0 198.51.100.2 ---- rg 198.51.100.1 | ro 203.0.113.1 ---- ow0 203.0.113.2
//!      2001:db8:10::2       2001:db8:10::1 | 2001:db8:20::1         2001:db8:20::2
//! ```
//!
//! The router forwards and masquerades (nftables, IPv4 and IPv6) what leaves
//! through `ro`, so the outside only ever sees the router's own address and has
//! no route back to the guest network. A rule naming the guest subnet therefore
//! matches on `rg`'s ingress (tc-ingress, XDP) and never on `ro`'s egress.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Output},
    sync::atomic::Ordering,
};

use anyhow::Result;

use crate::{SEQ, sh};

pub const GUEST4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const OUTSIDE4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const GUEST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 2);
pub const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 2);

pub struct Router {
    pub guest: String,
    pub router: String,
    pub outside: String,
    /// The router's guest-facing interface.
    pub rg: String,
    /// The router's outside interface.
    pub ro: String,
}

const NAT: &str = "table inet egress_test_nat {\n  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"ro\" masquerade\n  }\n}\n";

impl Router {
    pub fn new(tag: &str) -> Result<Router> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:x}{n}", std::process::id());
        let r = Router {
            guest: format!("egt-{tag}-{id}-g"),
            router: format!("egt-{tag}-{id}-r"),
            outside: format!("egt-{tag}-{id}-o"),
            rg: "rg".into(),
            ro: "ro".into(),
        };
        for ns in [&r.guest, &r.router, &r.outside] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&["ip", "link", "add", "gw0", "netns", &r.guest, "type", "veth", "peer", "name", "rg", "netns", &r.router])?;
        sh(&["ip", "link", "add", "ro", "netns", &r.router, "type", "veth", "peer", "name", "ow0", "netns", &r.outside])?;
        for (ns, dev, v4, v6) in [
            (&r.guest, "gw0", "198.51.100.2/24", "2001:db8:10::2/64"),
            (&r.router, "rg", "198.51.100.1/24", "2001:db8:10::1/64"),
            (&r.router, "ro", "203.0.113.1/24", "2001:db8:20::1/64"),
            (&r.outside, "ow0", "203.0.113.2/24", "2001:db8:20::2/64"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev])?;
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        sh(&["ip", "-n", &r.guest, "route", "add", "default", "via", "198.51.100.1"])?;
        sh(&["ip", "-n", &r.guest, "-6", "route", "add", "default", "via", "2001:db8:10::1"])?;
        for k in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            sh(&["ip", "netns", "exec", &r.router, "sysctl", "-qw", k])?;
        }
        let nat = crate::temp_file("nat.nft", NAT);
        sh(&["ip", "netns", "exec", &r.router, "nft", "-f", &nat.to_string_lossy()])?;
        Ok(r)
    }

    /// `egress ARGS` in the router's namespace.
    pub fn egress(&self, args: &[&str]) -> Output {
        crate::egress_in(&self.router, args)
    }

    /// `egress ARGS` in the router's namespace; panics with its output unless it exits 0.
    pub fn egress_ok(&self, args: &[&str]) -> String {
        crate::egress_ok_in(&self.router, args)
    }

    /// `egress counters --json` of a hook of a router interface.
    pub fn counters(&self, iface: &str, hook: &str) -> serde_json::Value {
        let out = self.egress_ok(&["counters", "--iface", iface, "--hook", hook, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"))
    }

    fn outside_addr(v6: bool) -> IpAddr {
        if v6 { OUTSIDE6.into() } else { OUTSIDE4.into() }
    }

    /// UDP datagrams from the guest to the outside; how many arrived.
    pub fn udp(&self, v6: bool, port: u16, n: u32) -> u32 {
        crate::udp(&self.guest, &self.outside, Self::outside_addr(v6), port, n)
    }

    /// A TCP connection from the guest to the outside; true if it carried a byte both ways.
    pub fn tcp(&self, v6: bool, port: u16) -> bool {
        crate::tcp(&self.guest, &self.outside, Self::outside_addr(v6), port)
    }

    /// Echo requests from the guest to the outside; replies seen.
    pub fn ping(&self, v6: bool, n: u32) -> u32 {
        crate::ping_from(&self.guest, Self::outside_addr(v6), n)
    }

    /// Resolves neighbours along the path (both families) before anything is asserted.
    pub fn settle(&self) {
        for v6 in [false, true] {
            for _ in 0..20 {
                if self.udp(v6, 7000, 1) == 1 {
                    break;
                }
            }
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for iface in [&self.rg, &self.ro] {
            for hook in ["tc-egress", "tc-ingress", "xdp"] {
                let _ = self.egress(&["detach", "--iface", iface, "--hook", hook]);
            }
        }
        for ns in [&self.guest, &self.router, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
