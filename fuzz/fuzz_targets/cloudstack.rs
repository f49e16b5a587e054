//! The CloudStack importer on arbitrary input: never a panic or a hang; every
//! import it accepts is a rule file egress's own parser accepts.
#![no_main]

use egress::{
    import::cloudstack::{Options, import},
    rules::{self, Action},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first byte picks the options, so that every path is reached.
    let sel = data.first().copied().unwrap_or(0);
    let o = Options {
        default_policy: Some(if sel & 1 == 0 { Action::Allow } else { Action::Deny }),
        guest_cidr: (sel & 2 != 0).then(|| "10.1.1.0/24".parse().unwrap()),
        skip_invalid: sel & 4 != 0,
        network: (sel & 8 != 0).then(|| "net-a".to_string()),
        offering: None,
    };
    if let Ok(i) = import("fuzz.json", text, &o)
        && let Err(e) = rules::parse("imported.toml", &i.toml)
    {
        panic!("an accepted import does not parse: {e}\n{}", i.toml);
    }
});
