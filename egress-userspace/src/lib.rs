//! egress user space: the rule file parser, the rule compiler, the reference
//! classifier, and the one module that talks to the kernel (`dataplane`).
pub mod compile;
pub mod counters;
pub mod dataplane;
pub mod explain;
pub mod hook;
pub mod import;
pub mod input;
pub mod lint;
pub mod observe;
pub mod packet;
pub mod reference;
pub mod reload;
pub mod rules;
pub mod ruleset_gen;
pub mod service;
pub mod sets;

/// SHA-256 of a rule file's bytes, as "sha256:HEX".
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
