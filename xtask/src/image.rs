//! `cargo xtask image`: an OCI image of egress, built with buildah from
//! scratch: the release binary and the three shared objects it links (the C
//! library, the loader, libgcc_s; taken from this Debian's packages, so they
//! are Debian's), an example config, nothing else. No shell, no package
//! manager: egress runs no other program in a container (`--unit` needs the
//! host's systemctl; in a container give `--cgroup PATH`). A registry's base
//! image cannot be pulled here, and a debootstrap rootfs would add a hundred
//! megabytes egress never runs.
//!
//! The image is `localhost/egress:VERSION` in the local containers storage
//! (podman and buildah share it) and `target/image/egress-VERSION.oci.tar`
//! (an OCI archive, for `podman load` or `skopeo copy` to a registry). Its
//! entrypoint is `egress run --config /etc/egress/egress.toml`.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{apt_install, egress_bin, package::output, root, run};

/// Builds the image; returns its name and the OCI archive's path.
pub(crate) fn image() -> Result<(String, PathBuf)> {
    apt_install(&[("buildah", "buildah"), ("podman", "podman"), ("runc", "runc")])?;
    let version = crate::package::workspace_version()?;
    let name = format!("localhost/egress:{version}");
    let out = root().join("target/image");
    let rootfs = out.join("rootfs");
    let _ = fs::remove_dir_all(&rootfs);
    fs::create_dir_all(rootfs.join("usr/sbin"))?;
    let bin = egress_bin();
    run(Command::new("strip").arg("--strip-unneeded").arg(&bin).arg("-o").arg(rootfs.join("usr/sbin/egress")))?;
    // The shared objects the binary links, at the paths the loader looks for them.
    let ldd = Command::new("ldd").arg(&bin).output().context("ldd")?;
    let mut libs = 0;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split_whitespace().find(|w| w.starts_with('/'));
        let Some(path) = path else { continue };
        let real = fs::canonicalize(path)?;
        let dst = rootfs.join(path.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().context("lib path")?)?;
        fs::copy(&real, &dst).with_context(|| format!("copy {}", real.display()))?;
        libs += 1;
    }
    if libs < 2 {
        bail!("ldd found {libs} shared objects for {}: expected the C library and the loader", bin.display());
    }
    for dir in ["etc/egress", "run/egress", "sys/fs/bpf", "tmp"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::copy(root().join("dist/egress.toml"), rootfs.join("etc/egress/egress.toml"))?;

    let ctr = output(Command::new("buildah").args(["from", "scratch"]))?;
    let ctr = ctr.trim();
    let built = (|| -> Result<()> {
        run(Command::new("buildah").args(["copy", ctr]).arg(&rootfs).arg("/"))?;
        run(Command::new("buildah").args([
            "config",
            "--entrypoint",
            r#"["/usr/sbin/egress","run","--config","/etc/egress/egress.toml"]"#,
            "--cmd",
            "",
            "--user",
            "0:0",
            "--port",
            "9977/tcp",
            "--label",
            "org.opencontainers.image.title=egress",
            "--label",
            &format!("org.opencontainers.image.version={version}"),
            "--label",
            "org.opencontainers.image.description=egress rules enforced in the kernel by an eBPF classifier",
            "--label",
            "org.opencontainers.image.licenses=MIT OR Apache-2.0",
            ctr,
        ]))?;
        run(Command::new("buildah").args(["commit", "--rm", ctr, &name]))
    })();
    if built.is_err() {
        let _ = Command::new("buildah").args(["rm", ctr]).output();
    }
    built?;
    let archive = out.join(format!("egress-{version}.oci.tar"));
    let _ = fs::remove_file(&archive);
    run(Command::new("buildah").args(["push", &name]).arg(format!("oci-archive:{}", archive.display())))?;
    eprintln!("xtask image: {name} (local containers storage) and {}", archive.display());
    Ok((name, archive))
}
