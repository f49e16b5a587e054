//! The CloudStack importer on arbitrary input: never a panic or a hang; every
//! import it accepts is a rule file egress's own parser accepts.
#![no_main]

use egress::{
    import::cloudstack::{Options, import},
    rules,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first byte picks the options, so that every path is reached.
    let o = Options::from_selector(data.first().copied().unwrap_or(0));
    if let Ok(i) = import("fuzz.json", text, &o)
        && let Err(e) = rules::parse("imported.toml", &i.toml)
    {
        panic!("an accepted import does not parse: {e}\n{}", i.toml);
    }
});
