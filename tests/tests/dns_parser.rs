//! The kernel's DNS answer parser against hickory-proto's, on 10,000 random answers
//! (well-formed, refused, mutated): what the companion program learns must be
//! exactly what hickory reads (fuzz/fuzz_targets/dnsdiff.rs; the `dns` fuzz
//! target runs the same check on fuzzed bytes). Needs root.

#[path = "../../fuzz/fuzz_targets/dnsdiff.rs"]
mod dnsdiff;

use rand::{Rng as _, SeedableRng as _};

#[test]
fn the_kernel_learns_exactly_what_hickory_reads() {
    egress_tests::need_root!("eBPF");
    let mut d = dnsdiff::Diff::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xd15ea5e);
    let mut bytes = [0u8; 96];
    for i in 0..10_000 {
        rng.fill(&mut bytes[..]);
        let msg = dnsdiff::answer_from(&bytes);
        d.check(&msg, i % 3 == 0);
    }
    // Not vacuous: many answers taught, many were refused as malformed.
    let s = d.stats();
    let (answers, malformed) = (s[egress_common::DS_ANSWERS as usize], s[egress_common::DS_MALFORMED as usize]);
    assert!(answers > 2_000 && malformed > 500, "answers {answers}, malformed {malformed}");
}

/// Inputs the `dns` fuzz target once failed on (fuzz/regressions/dns/), read as
/// it reads them: the first byte chooses the family and a raw or built message.
#[test]
fn fuzz_regressions_agree() {
    egress_tests::need_root!("eBPF");
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/dns");
    let mut d = dnsdiff::Diff::new();
    for e in std::fs::read_dir(dir).expect("fuzz/regressions/dns") {
        let data = std::fs::read(e.expect("entry").path()).expect("read");
        let Some(&first) = data.first() else { continue };
        let msg = if first & 2 != 0 { data[1..].to_vec() } else { dnsdiff::answer_from(&data[1..]) };
        d.check(&msg, first & 1 != 0);
    }
}
