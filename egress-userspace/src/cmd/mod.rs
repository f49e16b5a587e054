//! Command front ends that outgrew `main.rs`: what a command reads from the
//! command line and prints; the work itself is in the library.

pub mod docs;
pub mod explain;
pub mod import;
pub mod watch;
