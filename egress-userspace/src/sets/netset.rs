//! Set files: one entry a line, as blocklists and cloud providers publish
//! them. An entry is an address, a CIDR or a range `a-b` (split into CIDRs);
//! `#` and `;` start a comment (FireHOL's headers, Spamhaus DROP's
//! `1.2.3.0/24 ; SBL123`), blank lines are ignored; both families may be mixed.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

use super::MAX_SET_ENTRIES;

/// A bad line: (1-based line, message).
pub type LineError = (usize, String);

/// The entries of a set file's text with their lines (ranges split into
/// CIDRs). Every bad line is reported, up to `MAX_ERRORS`.
pub fn parse(text: &str) -> Result<Vec<(IpNet, u32)>, Vec<LineError>> {
    const MAX_ERRORS: usize = 20;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let entry = raw.split(['#', ';']).next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        match parse_entry(entry) {
            Ok(nets) => out.extend(nets.into_iter().map(|n| (n, line as u32))),
            Err(m) => {
                errors.push((line, m));
                if errors.len() == MAX_ERRORS {
                    break;
                }
            }
        }
        if out.len() > MAX_SET_ENTRIES {
            errors.push((line, format!("more than the {MAX_SET_ENTRIES} entries a set may hold; split it into several sets")));
            break;
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// One entry: an address, a CIDR, or a range `a-b` of one family.
pub fn parse_entry(s: &str) -> Result<Vec<IpNet>, String> {
    // A second field after whitespace (`1.2.3.0/24 SBL123`) is not an entry.
    if s.split_whitespace().count() > 1 && !s.contains('-') {
        return Err(format!("'{s}': one entry a line (an address, a CIDR or a range a-b), then an optional # or ; comment"));
    }
    if let Some((a, b)) = s.split_once('-') {
        let addr =
            |t: &str| t.trim().parse::<IpAddr>().map_err(|_| format!("'{}' in range '{s}' is not an IPv4 or IPv6 address", t.trim()));
        let (a, b) = (addr(a)?, addr(b)?);
        return match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => Ok(Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect()),
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => Ok(Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect()),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Err(format!("range '{s}' is empty: the first address is greater than the last"))
            }
            _ => Err(format!("range '{s}' mixes IPv4 and IPv6")),
        };
    }
    crate::rules::parse_cidr(s).map(|n| vec![n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(text: &str) -> Vec<String> {
        parse(text).unwrap().into_iter().map(|(n, l)| format!("{n}@{l}")).collect()
    }

    #[test]
    fn entries_comments_and_ranges() {
        assert_eq!(
            nets("# header\n\n192.0.2.1\n198.51.100.0/24 ; SBL123\n  2001:db8::/32  # doc\n203.0.113.4-203.0.113.11\n"),
            vec!["192.0.2.1/32@3", "198.51.100.0/24@4", "2001:db8::/32@5", "203.0.113.4/30@6", "203.0.113.8/30@6"]
        );
        assert_eq!(nets("2001:db8::1 - 2001:db8::2\n"), vec!["2001:db8::1/128@1", "2001:db8::2/128@1"]);
        assert_eq!(nets("0.0.0.0-255.255.255.255\n"), vec!["0.0.0.0/0@1"]);
        assert_eq!(nets("10.0.0.5-10.0.0.5\n"), vec!["10.0.0.5/32@1"]);
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = parse("192.0.2.0/24\n300.1.1.1\n192.0.2.7/24\n10.0.0.9-10.0.0.1\n10.0.0.1-2001:db8::1\n1.2.3.0/24 SBL123\n").unwrap_err();
        let lines: Vec<usize> = e.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6], "{e:?}");
        assert!(e[0].1.contains("'300.1.1.1' is not an IPv4 or IPv6 address"), "{e:?}");
        assert!(e[1].1.contains("has host bits set; did you mean 192.0.2.0/24?"), "{e:?}");
        assert!(e[2].1.contains("is empty"), "{e:?}");
        assert!(e[3].1.contains("mixes IPv4 and IPv6"), "{e:?}");
        assert!(e[4].1.contains("one entry a line"), "{e:?}");
    }

    /// Real published files, as they are (snippets kept in tests/fixtures/sets/).
    #[test]
    fn firehol_and_spamhaus_load_as_published() {
        let firehol = include_str!("../../../tests/fixtures/sets/firehol_level1.netset");
        let f = parse(firehol).unwrap();
        assert_eq!(f.len(), 38);
        assert_eq!((f[0].0.to_string(), f[0].1), ("0.0.0.0/8".to_string(), 35));
        assert!(f.iter().all(|(n, _)| n.addr().is_ipv4()));
        let drop = include_str!("../../../tests/fixtures/sets/spamhaus_drop.txt");
        let d = parse(drop).unwrap();
        assert_eq!(d.len(), 9);
        assert_eq!(d[0].0.to_string(), "1.4.0.0/17");
        assert_eq!(d[0].1, 5);
    }
}
