//! Builds the eBPF program (crate egress-ebpf) with the nightly toolchain and
//! bpf-linker; the object lands in OUT_DIR/egress-ebpf and is embedded by
//! src/dataplane.rs. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "egress-ebpf")
        .ok_or_else(|| anyhow!("egress-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    let root_dir = manifest_path.parent().ok_or_else(|| anyhow!("no parent for {manifest_path}"))?.as_str();
    let ebpf_package = Package { name: name.as_str(), root_dir, ..Default::default() };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}
