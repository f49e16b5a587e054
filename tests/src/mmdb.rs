//! A tiny MaxMind DB writer for the tests: a country database (IPv6 tree, IPv4
//! under ::/96) written from the format's specification, so that no database
//! under someone else's licence is shipped. Records are
//! `{country: {iso_code}}` (GeoLite2 and DB-IP lite), `{registered_country:
//! {iso_code}}` (a network whose country is known only by registration), or
//! `{country_code}` (IPinfo lite).

use std::net::IpAddr;

/// Which record layout a network gets.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    Country,
    RegisteredCountry,
    CountryCode,
}

/// The bytes of a MaxMind DB mapping each network to its country code.
pub fn country_db(networks: &[(&str, &str, Layout)]) -> Vec<u8> {
    // Data section: one record per (code, layout), shared by its networks.
    let mut data = Vec::new();
    let mut offsets: Vec<((String, u8), usize)> = Vec::new();
    // Tree: nodes of two records; a record is a node, "empty" or data.
    #[derive(Clone, Copy)]
    enum Rec {
        Empty,
        Node(usize),
        Data(usize),
    }
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty; 2]];
    for &(net, code, layout) in networks {
        let key = (code.to_string(), layout as u8);
        let off = match offsets.iter().find(|(k, _)| *k == key) {
            Some((_, o)) => *o,
            None => {
                let o = data.len();
                match layout {
                    Layout::Country => {
                        map(&mut data, &[("country", &|d: &mut Vec<u8>| map(d, &[("iso_code", &|d: &mut Vec<u8>| string(d, code))]))])
                    }
                    Layout::RegisteredCountry => map(
                        &mut data,
                        &[("registered_country", &|d: &mut Vec<u8>| map(d, &[("iso_code", &|d: &mut Vec<u8>| string(d, code))]))],
                    ),
                    Layout::CountryCode => map(&mut data, &[("country_code", &|d: &mut Vec<u8>| string(d, code))]),
                }
                offsets.push((key, o));
                o
            }
        };
        let n: ipnet::IpNet = net.parse().unwrap_or_else(|e| panic!("{net}: {e}"));
        let (bits, len): (u128, u32) = match n.network() {
            IpAddr::V4(a) => (u32::from(a) as u128, 96 + n.prefix_len() as u32),
            IpAddr::V6(a) => (u128::from(a), n.prefix_len() as u32),
        };
        assert!(len > 0, "a network of length 0 is not written");
        // Networks must not overlap (a real database's do not).
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth == len - 1 {
                assert!(matches!(nodes[node][bit], Rec::Empty), "{net} overlaps an earlier network");
                nodes[node][bit] = Rec::Data(off);
                break;
            }
            node = match nodes[node][bit] {
                Rec::Node(i) => i,
                Rec::Data(_) => panic!("{net} overlaps an earlier network"),
                Rec::Empty => {
                    nodes.push([Rec::Empty; 2]);
                    let i = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(i);
                    i
                }
            };
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => count,
                Rec::Node(i) => i,
                Rec::Data(o) => count + 16 + o,
            };
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    map(
        &mut out,
        &[
            ("binary_format_major_version", &|d: &mut Vec<u8>| uint(d, 5, 2)),
            ("binary_format_minor_version", &|d: &mut Vec<u8>| uint(d, 5, 0)),
            ("build_epoch", &|d: &mut Vec<u8>| uint(d, 9, 1_700_000_000)),
            ("database_type", &|d: &mut Vec<u8>| string(d, "egress-test-Country")),
            ("description", &|d: &mut Vec<u8>| map(d, &[("en", &|d: &mut Vec<u8>| string(d, "egress test database"))])),
            ("ip_version", &|d: &mut Vec<u8>| uint(d, 5, 6)),
            ("languages", &|d: &mut Vec<u8>| {
                control(d, 11, 1);
                string(d, "en")
            }),
            ("node_count", &|d: &mut Vec<u8>| uint(d, 6, count as u64)),
            ("record_size", &|d: &mut Vec<u8>| uint(d, 5, 32)),
        ],
    );
    out
}

type Writer<'a> = &'a dyn Fn(&mut Vec<u8>);

/// A control byte: type (extended types > 7 in a second byte) and size.
fn control(d: &mut Vec<u8>, ty: u8, size: usize) {
    assert!(size < 29, "the test writer keeps sizes small");
    if ty <= 7 {
        d.push(ty << 5 | size as u8);
    } else {
        d.push(size as u8);
        d.push(ty - 7);
    }
}

fn string(d: &mut Vec<u8>, s: &str) {
    control(d, 2, s.len());
    d.extend_from_slice(s.as_bytes());
}

/// An unsigned integer of type `ty` (5 uint16, 6 uint32, 9 uint64), big-endian,
/// in as few bytes as it needs.
fn uint(d: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(d, ty, 8 - skip);
    d.extend_from_slice(&bytes[skip..]);
}

fn map(d: &mut Vec<u8>, pairs: &[(&str, Writer<'_>)]) {
    control(d, 7, pairs.len());
    for (k, v) in pairs {
        string(d, k);
        v(d);
    }
}
