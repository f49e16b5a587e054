//! DNS answers through the companion program (BPF_PROG_TEST_RUN, root): what
//! it learns must be exactly what hickory-proto reads (dnsdiff.rs). The first
//! byte chooses the family and whether the rest is a raw message or the seed
//! of a built answer (valid, refused or mutated).
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;

#[path = "dnsdiff.rs"]
mod dnsdiff;

static DIFF: Mutex<Option<dnsdiff::Diff>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 || data.is_empty() {
        return;
    }
    let mut g = DIFF.lock().unwrap_or_else(|e| e.into_inner());
    let d = g.get_or_insert_with(dnsdiff::Diff::new);
    let (v6, raw) = (data[0] & 1 != 0, data[0] & 2 != 0);
    let msg = if raw { data[1..].to_vec() } else { dnsdiff::answer_from(&data[1..]) };
    d.check(&msg, v6);
});
