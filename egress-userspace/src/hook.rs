//! Where on an interface a rule set is enforced. The classifier and its counters
//! are the same on every hook; what differs is which packets it sees.

use std::fmt;

/// A hook of an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// Packets leaving through the interface (TC egress, after routing and SNAT).
    #[default]
    TcEgress,
    /// Packets arriving on the interface (TC ingress, before routing and NAT).
    TcIngress,
    /// Packets arriving on the interface, in the driver (XDP; native where the
    /// driver supports it, generic otherwise), before the stack allocates anything.
    Xdp,
    /// Not an interface's: a cgroup's packets and socket calls (`--cgroup`).
    #[value(skip)]
    Cgroup,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::TcEgress, Hook::TcIngress, Hook::Xdp];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::TcEgress => "tc-egress",
            Hook::TcIngress => "tc-ingress",
            Hook::Xdp => "xdp",
            Hook::Cgroup => "cgroup",
        }
    }

    /// Suffix of the attachment key ("" for tc-egress, so that key stays "COOKIE-IFINDEX").
    pub fn key_suffix(self) -> &'static str {
        match self {
            Hook::TcEgress => "",
            Hook::TcIngress => "-tc-ingress",
            Hook::Xdp => "-xdp",
            Hook::Cgroup => "",
        }
    }

    /// The direction a deny acts on, for messages: "leaving" or "arriving on".
    pub fn direction(self) -> &'static str {
        match self {
            Hook::TcEgress | Hook::Cgroup => "leaving",
            Hook::TcIngress | Hook::Xdp => "arriving on",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Hook {
    type Err = String;
    fn from_str(s: &str) -> Result<Hook, String> {
        Hook::ALL
            .into_iter()
            .chain([Hook::Cgroup])
            .find(|h| h.as_str() == s)
            .ok_or_else(|| format!("unknown hook '{s}' (expected one of: tc-egress, tc-ingress, xdp)"))
    }
}
