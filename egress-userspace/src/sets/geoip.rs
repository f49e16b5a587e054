//! Countries from a MaxMind DB file (GeoLite2-Country, DB-IP's and IPinfo's
//! lite country files; City databases work too): every network of the
//! database whose country is one of the codes asked for. The country is the
//! record's `country.iso_code`, else its `registered_country.iso_code` (the
//! GeoIP2 and DB-IP layout), else a top-level `country_code` (IPinfo's).
//! Pure: the database's bytes are handed in.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::Deserialize;

/// ISO 3166-1 alpha-2 codes (officially assigned), and XK (Kosovo, a
/// user-assigned code that every GeoIP provider uses).
const ISO_3166: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT \
MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG \
UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK";

/// Whether `code` is an ISO 3166-1 alpha-2 country code (upper case).
pub fn is_country(code: &str) -> bool {
    code.len() == 2 && ISO_3166.split(' ').any(|c| c == code)
}

#[derive(Deserialize)]
struct Iso<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Iso<'a>>,
    #[serde(borrow)]
    registered_country: Option<Iso<'a>>,
    #[serde(borrow)]
    country_code: Option<&'a str>,
}

impl Record<'_> {
    fn code(&self) -> Option<&str> {
        self.country
            .as_ref()
            .and_then(|c| c.iso_code)
            .or_else(|| self.registered_country.as_ref().and_then(|c| c.iso_code))
            .or(self.country_code)
    }
}

/// The networks of the database whose country is one of `codes` (upper case),
/// each with the index of its code in `codes`. Errors are messages without the
/// file name (the caller adds it).
pub fn networks(db: &[u8], codes: &[String]) -> Result<Vec<(IpNet, u32)>, String> {
    let reader = maxminddb::Reader::from_source(db).map_err(|e| format!("not a MaxMind DB file: {e}"))?;
    let mut out = Vec::new();
    // Countries databases hold a few hundred distinct records shared by
    // hundreds of thousands of networks: each record is decoded once.
    let mut by_offset: HashMap<usize, Option<u32>> = HashMap::new();
    let iter = reader.networks(Default::default()).map_err(|e| format!("cannot walk the database: {e}"))?;
    for item in iter {
        let item = item.map_err(|e| format!("corrupt database: {e}"))?;
        let Some(offset) = item.offset() else { continue };
        let idx = match by_offset.get(&offset) {
            Some(i) => *i,
            None => {
                let rec: Option<Record<'_>> = item.decode().map_err(|e| format!("corrupt database record: {e}"))?;
                let i = rec
                    .as_ref()
                    .and_then(Record::code)
                    .and_then(|c| codes.iter().position(|k| k.eq_ignore_ascii_case(c)))
                    .map(|i| i as u32);
                by_offset.insert(offset, i);
                i
            }
        };
        let Some(idx) = idx else { continue };
        let net = item.network().map_err(|e| format!("corrupt database network: {e}"))?;
        let net = IpNet::new(net.network(), net.prefix()).map_err(|e| format!("corrupt database network: {e}"))?;
        out.push((net, idx));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_codes() {
        assert_eq!(ISO_3166.split(' ').count(), 250);
        assert!(is_country("KP") && is_country("IR") && is_country("XK"));
        assert!(!is_country("XX") && !is_country("kp") && !is_country("EU") && !is_country("USA"));
    }

    #[test]
    fn garbage_is_not_a_database() {
        let e = networks(b"not a database at all", &["KP".into()]).unwrap_err();
        assert!(e.starts_with("not a MaxMind DB file"), "{e}");
    }
}
