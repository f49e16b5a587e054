//! `cargo xtask old-kernel`: egress on the oldest kernel it claims, Linux 6.1
//! (Debian 12's, the oldest long-term kernel with everything the programs use:
//! `bpf_xdp_load_bytes` 5.18, ring buffers 5.8, SO_NETNS_COOKIE 5.14; and the
//! kernel before tcx, so TC programs attach as clsact filters).
//!
//! Debian's own 6.1 kernel package boots under qemu's software emulation (TCG:
//! the same on every machine; KVM inside this kind of VM cannot start a guest
//! CPU) with an initramfs of busybox, the release `egress` and `tests/vm/`'s files,
//! whose `init` runs the checks in the VM: every program through that kernel's
//! verifier (stateless, stateful with its inbound companion, the debug twin,
//! XDP), real packets on `lo` dropped and counted, a map the kernel cannot
//! allocate refused with the old rules kept, and a rule set at the full 262,144
//! rules. It prints `EGRESS-VM ok NAME` or `EGRESS-VM FAIL NAME` per check and
//! `EGRESS-VM done`; this task fails unless every check said ok.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, egress_bin, quiet_ok, root, run};

/// The checks `tests/vm/init` runs, each of which must say ok.
const CHECKS: [&str; 16] = [
    "apply",
    "dropped",
    "counted",
    "nomem-refused",
    "nomem-kept",
    "debug",
    "stateful",
    "xdp",
    "dns",
    "dns-stateful",
    "dns-xdp",
    "cgroup",
    "cgroup-stateful",
    "cgroup-dns",
    "cgroup-debug",
    "full-capacity",
];

pub(crate) fn old_kernel() -> Result<()> {
    let work = root().join("target/old-kernel");
    fs::create_dir_all(&work)?;
    // qemu and a static busybox, from Debian's packages.
    let missing: Vec<&str> = [("qemu-system-x86_64", "qemu-system-x86"), ("busybox", "busybox-static")]
        .into_iter()
        .filter(|(cmd, _)| !quiet_ok(Command::new("sh").args(["-c", &format!("command -v {cmd}")])))
        .map(|(_, p)| p)
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask old-kernel: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let (vmlinuz, modules) = kernel(&work)?;
    // The largest rule set a file may hold, generated as the benchmark's.
    let full = work.join("full.toml");
    if !full.exists() {
        let o = Command::new(cargo())
            .args(["run", "--release", "--quiet", "-p", "egress-tests", "--bin", "egress-bench", "--", "--generate", "262144"])
            .current_dir(root())
            .output()?;
        if !o.status.success() {
            bail!("generating the full rule set failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        fs::write(&full, &o.stdout)?;
    }
    let initrd = work.join("initramfs.cpio");
    initramfs(&initrd, &modules, &full)?;
    boot(&work, &vmlinuz, &initrd)
}

/// Debian 12's newest 6.1 kernel package, downloaded and unpacked once: the
/// kernel image and the folder of the modules egress needs (clsact, cls_bpf).
fn kernel(work: &Path) -> Result<(PathBuf, PathBuf)> {
    // Debian's 6.1 kernel packages as (ABI number, name); the lists are
    // refreshed once if they name none.
    let list = || -> Result<Vec<(u32, String)>> {
        let names = Command::new("apt-cache").args(["pkgnames", "linux-image-6.1.0-"]).output()?;
        Ok(String::from_utf8_lossy(&names.stdout)
            .lines()
            .filter_map(|n| {
                let abi = n.strip_prefix("linux-image-6.1.0-")?.strip_suffix("-amd64-unsigned")?;
                Some((abi.parse().ok()?, n.to_string()))
            })
            .collect())
    };
    let mut found = list()?;
    if found.is_empty() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        found = list()?;
    }
    found.sort();
    let Some((_, pkg)) = found.pop() else { bail!("no linux-image-6.1.0-N-amd64-unsigned package in Debian's lists") };
    let dir = work.join(&pkg);
    if !dir.join("done").exists() {
        eprintln!("xtask old-kernel: downloading {pkg}");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        if !Command::new("apt-get").args(["download", "-q", &pkg]).current_dir(&dir).status()?.success() {
            bail!("apt-get download {pkg} failed");
        }
        let deb = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        // Only the kernel image and the modules needed: the package unpacks to 400 MB.
        let st = Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './boot/vmlinuz-*' '*/sch_ingress.ko*' '*/cls_bpf.ko*'")
            .args(["sh", deb.to_str().unwrap_or_default(), dir.to_str().unwrap_or_default()])
            .status()?;
        if !st.success() {
            bail!("unpacking {} failed", deb.display());
        }
        fs::remove_file(&deb)?;
        fs::write(dir.join("done"), "")?;
    }
    let vmlinuz = fs::read_dir(dir.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no vmlinuz in the kernel package")?;
    Ok((vmlinuz, dir.join("lib/modules")))
}

/// A newc cpio archive (what the kernel unpacks as its initramfs).
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    fn file(&mut self, name: &str, from: &Path) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("read {}", from.display()))?;
        let exec = fs::metadata(from)?.permissions().mode() & 0o111 != 0;
        self.entry(name, if exec { 0o100755 } else { 0o100644 }, &data);
        Ok(())
    }
    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The shared libraries `bin` loads (ldd), as absolute paths.
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let o = Command::new("ldd").arg(bin).output()?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect())
}

fn initramfs(to: &Path, modules: &Path, full: &Path) -> Result<()> {
    let mut c = Cpio { out: Vec::new(), ino: 0 };
    for d in ["bin", "sbin", "dev", "proc", "sys", "run", "tmp", "lib", "lib64", "lib/x86_64-linux-gnu", "modules", "vm", "etc"] {
        c.dir(d);
    }
    let busybox = Command::new("sh").args(["-c", "command -v busybox"]).output()?;
    c.file("bin/busybox", Path::new(String::from_utf8_lossy(&busybox.stdout).trim()))?;
    c.symlink("bin/sh", "busybox");
    let egress = egress_bin();
    c.file("bin/egress", &egress)?;
    for lib in libraries(&egress)? {
        let name = lib.to_string_lossy().into_owned();
        // Real files under their own names (ld.so and libc by their paths).
        c.file(&name, &fs::canonicalize(&lib)?)?;
    }
    // The two modules of the clsact path (uncompressed in the initramfs).
    for m in walk(modules)? {
        let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let base = name.trim_end_matches(".xz").trim_end_matches(".zst");
        let data = match name.rsplit_once('.') {
            Some((_, "xz")) => Command::new("xz").arg("-dc").arg(&m).output()?.stdout,
            Some((_, "zst")) => Command::new("zstd").arg("-dc").arg(&m).output()?.stdout,
            _ => fs::read(&m)?,
        };
        c.entry(&format!("modules/{base}"), 0o100644, &data);
    }
    let vm = root().join("tests/vm");
    for e in fs::read_dir(&vm)? {
        let p = e?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name == "init" {
            c.file("init", &p)?;
        } else {
            c.file(&format!("vm/{name}"), &p)?;
        }
    }
    c.file("vm/full.toml", full)?;
    let data = c.finish();
    let mut f = fs::File::create(to)?;
    f.write_all(&data)?;
    eprintln!("xtask old-kernel: initramfs {} ({} MiB)", to.display(), data.len() >> 20);
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e?.path();
        if fs::symlink_metadata(&p)?.is_dir() {
            out.extend(walk(&p)?);
        } else if p.metadata()?.size() > 0 {
            out.push(p);
        }
    }
    Ok(out)
}

/// Boots the kernel with the initramfs and reads the checks' verdicts from the
/// serial console (kept in target/old-kernel/console.log).
fn boot(work: &Path, vmlinuz: &Path, initrd: &Path) -> Result<()> {
    eprintln!("xtask old-kernel: booting {} (software emulation, about a minute and a half)", vmlinuz.display());
    let log = work.join("console.log");
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    c.args(["-m", "2048", "-smp", "2", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(Stdio::inherit());
    let mut child = c.spawn().context("start qemu-system-x86_64")?;
    let limit = Duration::from_secs(900);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = fs::read_to_string(&log).unwrap_or_default();
    // From the marker on (the firmware's terminal escapes share the first line).
    let said: Vec<&str> = out.lines().filter_map(|l| l.find("EGRESS-VM").map(|at| l[at..].trim_end())).collect();
    for l in &said {
        eprintln!("  {l}");
    }
    let ok = |name: &str| said.iter().any(|l| *l == format!("EGRESS-VM ok {name}"));
    let failed: Vec<&str> = CHECKS.iter().copied().filter(|n| !ok(n)).collect();
    if status.is_none() {
        bail!("the VM did not finish within {} s (console: {})", limit.as_secs(), log.display());
    }
    if !failed.is_empty() || !said.contains(&"EGRESS-VM done") {
        bail!("on the old kernel, checks not ok: {} (console: {})", failed.join(", "), log.display());
    }
    eprintln!("xtask old-kernel: all {} checks ok in {:.0} s", CHECKS.len(), t.elapsed().as_secs_f64());
    Ok(())
}
