//! The rule file parser and compiler on arbitrary input: never a panic or a
//! hang; every file the parser accepts compiles, and (as root) its compiled
//! maps, loaded into the kernel, classify sample packets exactly like the
//! reference classifier. What follows a line `--- s.txt` is a set file the
//! rule file can name (`file = "s.txt"`): the set file parser is fuzzed too.
#![no_main]

use egress::{compile, rules};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (text, set) = text.split_once("\n--- s.txt\n").unwrap_or((text, ""));
    let files = egress::sets::InMemory([("s.txt".to_string(), set.as_bytes().to_vec())].into_iter().collect());
    let Ok(rs) = rules::parse_with("fuzz.toml", text, &files) else { return };
    let compiled = match compile::compile(&rs) {
        Ok(c) => c,
        // Over a map's capacity: a clear error, not a crash (fine).
        Err(e) if e.to_string().contains("capacity") || e.to_string().contains("more than") => return,
        Err(e) => panic!("an accepted rule file does not compile: {e}\n{text}"),
    };
    _ = egress::lint::lint(&rs, 1);
    if common::is_root() {
        common::agree_on_samples(&rs, &compiled, text);
    }
});
