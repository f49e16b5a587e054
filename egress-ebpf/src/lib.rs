// Exists so that egress-userspace can name this crate as a build-dependency (cargo then
// rebuilds the BPF object when it changes); the program itself is the `egress-ebpf` binary.
#![no_std]
