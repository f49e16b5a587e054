//! Project tasks cargo cannot do alone. Run as `cargo xtask <task>`.
//!
//! - `setup`: install what a fresh machine lacks (nightly rust-src, bpf-linker built
//!   against the nightly's own LLVM, Debian packages); idempotent and quick when warm.
//! - `build`: setup, then build the `egress` binary (release).
//! - `demo`:  build, then run the embedded demo in a pair of network namespaces.
//! - `fuzz`:  cargo-fuzz on the parser + compiler, the CloudStack importer and the
//!   classifier (frames through BPF_PROG_TEST_RUN), regressions first.
//! - `old-kernel`: boot Debian 12's Linux 6.1 (the oldest kernel egress claims)
//!   under qemu and run egress there on real packets (oldkernel.rs).
//! - `package`: build, then the Debian package (package.rs).
//! - `image`: build, then the OCI image (image.rs).
//! - `test`:  build, clippy on the product (its lints deny unwrap, expect and
//!   panic), then run every test (unit, BPF_PROG_TEST_RUN, netns integration),
//!   then the old-kernel checks (`EGRESS_OLD_KERNEL=0` skips them), then each
//!   fuzz target for 20 s (`EGRESS_FUZZ_SECONDS`; 0 skips it).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod image;
mod oldkernel;
mod package;

#[derive(Parser)]
#[command(name = "xtask", about = "egress project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing build and test dependencies (needs network access to the registries).
    Setup,
    /// Setup, then build the egress binary in release mode.
    Build,
    /// Build, then apply examples/demo.toml in a sandboxed namespace pair, send traffic,
    /// print the counters and clean up. Needs root.
    Demo,
    /// Build, then measure the classifier against baselines in the same run
    /// (BPF_PROG_TEST_RUN and real traffic in namespaces: no filter, empty program,
    /// iptables-legacy, nftables); writes BENCHMARKS.md with a target table and
    /// SVG plots in docs/. Installs iptables and nftables when missing. Root.
    Bench {
        /// Up to 10k rules and fewer packets, written to target/bench-quick/ (a smoke
        /// test of the benchmark, not figures to publish).
        #[arg(long)]
        quick: bool,
    },
    /// Fuzz the rule file parser + compiler, the CloudStack importer and the
    /// classifier (arbitrary frames through BPF_PROG_TEST_RUN, root) with
    /// cargo-fuzz (libFuzzer; installed when missing), each for --seconds. Inputs
    /// that once crashed (fuzz/regressions/TARGET/) are run first; a new crash
    /// is saved under fuzz/artifacts/TARGET/ and fails the task.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (rules, cloudstack, packet).
        targets: Vec<String>,
    },
    /// Build, then boot Debian 12's Linux 6.1 (the oldest kernel egress claims)
    /// under qemu with an initramfs of busybox and egress, and run egress there:
    /// every program through that kernel's verifier, real packets on lo dropped
    /// and counted, a map the kernel cannot allocate refused with the old rules
    /// kept, a rule set at full capacity. Installs qemu-system-x86 and
    /// busybox-static, downloads the kernel package. Root.
    OldKernel,
    /// Build, then write the Debian package target/package/egress_VERSION_ARCH.deb
    /// (dpkg-deb): the binary, the systemd unit, /etc/egress/egress.toml (a
    /// conffile), manual pages, bash/zsh/fish completions, README and examples.
    Package,
    /// Build, then an OCI image of egress with buildah, from scratch (the binary
    /// and the shared objects it links): localhost/egress:VERSION and
    /// target/image/egress-VERSION.oci.tar. Installs buildah, podman and runc.
    Image,
    /// Build, then run all tests (root-only tests need root; CI runs as root).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Demo => {
            build()?;
            run(Command::new(cargo())
                .args(["run", "--release", "--quiet", "-p", "egress-tests", "--bin", "egress-demo"])
                .env("EGRESS_BIN", egress_bin()))
        }
        Task::Bench { quick } => {
            build()?;
            // The comparison needs iptables-legacy and nftables (Debian packages).
            apt_install(&[("iptables-legacy-restore", "iptables"), ("nft", "nftables")])?;
            // Every binary of the tests crate: part 1f runs the cgroup client
            // (egress-cgroup-client) beside the benchmark.
            run(Command::new(cargo()).args(["build", "--release", "--quiet", "-p", "egress-tests", "--bins"]))?;
            let mut c = Command::new(cargo());
            c.args(["run", "--release", "--quiet", "-p", "egress-tests", "--bin", "egress-bench", "--"]);
            if quick {
                c.arg("--quick");
            }
            // A quick run is a smoke test: it must not overwrite the published figures.
            let out = if quick { root().join("target/bench-quick/BENCHMARKS.md") } else { root().join("BENCHMARKS.md") };
            c.arg("--out").arg(out).env("EGRESS_BIN", egress_bin());
            run(&mut c)
        }
        Task::Fuzz { seconds, targets } => fuzz(seconds, &targets),
        Task::OldKernel => {
            build()?;
            oldkernel::old_kernel()
        }
        Task::Package => {
            build()?;
            package::package().map(|_| ())
        }
        Task::Image => {
            build()?;
            image::image().map(|_| ())
        }
        Task::Test { args } => {
            build()?;
            // The product's lints (no unwrap, expect or panic outside tests) are
            // errors: checked here so that they hold on every CI run.
            if !quiet_ok(Command::new(cargo()).args(["clippy", "--version"])) {
                eprintln!("xtask test: adding clippy to the toolchain");
                run(Command::new("rustup").args(["component", "add", "clippy"]))?;
            }
            run(Command::new(cargo()).args(["clippy", "--release", "-p", "egress-common", "-p", "egress-userspace", "--lib", "--bins"]))?;
            // The package too: tests/tests/package.rs installs it.
            let deb = package::package()?;
            let mut c = Command::new(cargo());
            c.args(["test", "--release", "--workspace", "--exclude", "egress-ebpf"]);
            c.env("EGRESS_BIN", egress_bin()).env("EGRESS_DEB", &deb);
            // And the image: tests/tests/image.rs runs it (or says why it cannot).
            match image::image() {
                Ok((name, _)) => c.env("EGRESS_IMAGE", name),
                Err(e) => c.env("EGRESS_IMAGE_ERROR", format!("{e:#}")),
            };
            if !args.is_empty() {
                c.arg("--").args(&args);
            }
            run_tests(&mut c)?;
            // Then egress on the oldest kernel it claims, unless a test filter
            // was given or EGRESS_OLD_KERNEL=0.
            if args.is_empty() && env::var("EGRESS_OLD_KERNEL").as_deref() != Ok("0") {
                oldkernel::old_kernel()?;
            }
            // Then a bounded fuzz run of every target (regressions first), unless
            // a test filter was given or EGRESS_FUZZ_SECONDS=0.
            let secs = env::var("EGRESS_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
            if args.is_empty() && secs > 0 {
                fuzz(secs, &[])?;
            }
            Ok(())
        }
    }
}

const FUZZ_TARGETS: [&str; 4] = ["rules", "cloudstack", "packet", "dns"];

/// `cargo xtask fuzz`: regressions first, then each target for `seconds`.
fn fuzz(seconds: u64, only: &[String]) -> Result<()> {
    setup()?;
    // cargo-fuzz builds with the nightly (sanitizers): through rustup, since the
    // cargo running xtask is the stable one's own binary.
    let nightly_cargo = || {
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "cargo"]);
        c
    };
    if !quiet_ok(nightly_cargo().args(["fuzz", "--version"])) {
        eprintln!("xtask fuzz: installing cargo-fuzz");
        run(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = root().join("fuzz");
    for t in FUZZ_TARGETS.iter().filter(|t| only.is_empty() || only.iter().any(|o| o == *t)) {
        let corpus = dir.join("corpus").join(t);
        fs::create_dir_all(&corpus)?;
        // Seeds: the project's own valid inputs.
        let seeds: Vec<PathBuf> = match *t {
            "rules" => vec![root().join("examples"), dir.join("seeds/rules")],
            "cloudstack" => vec![root().join("tests/fixtures/cloudstack")],
            "dns" => vec![dir.join("seeds/dns")],
            _ => vec![dir.join("seeds/packet")],
        };
        let regressions = dir.join("regressions").join(t);
        let mut c = nightly_cargo();
        c.current_dir(&dir).args(["fuzz", "build", "--release", t]);
        run(&mut c)?;
        if regressions.exists() {
            eprintln!("xtask fuzz: {t}: the kept regression inputs");
            let mut c = nightly_cargo();
            c.current_dir(&dir).args(["fuzz", "run", "--release", t]).arg(&regressions).args(["--", "-runs=0"]);
            run(&mut c)?;
        }
        eprintln!("xtask fuzz: {t}: {seconds} s");
        let mut c = nightly_cargo();
        c.current_dir(&dir).args(["fuzz", "run", "--release", t]).arg(&corpus);
        for s in seeds.iter().filter(|s| s.exists()) {
            c.arg(s);
        }
        c.args(["--", &format!("-max_total_time={seconds}"), "-timeout=10", "-rss_limit_mb=4096", "-print_final_stats=1"]);
        run(&mut c).with_context(|| {
            format!("fuzz target {t} found a failure: the input is under fuzz/artifacts/{t}/; keep it in fuzz/regressions/{t}/ once fixed")
        })?;
    }
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn egress_bin() -> PathBuf {
    root().join("target/release/egress")
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(c: &mut Command) -> Result<()> {
    let shown = format!("{c:?}");
    let st = c.current_dir(root()).status().with_context(|| format!("run {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and closes with one summary line over all
/// test binaries ("summary: N passed, N failed, N skipped").
fn run_tests(c: &mut Command) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let shown = format!("{c:?}");
    let mut child = c.current_dir(root()).stdout(Stdio::piped()).spawn().with_context(|| format!("run {shown}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            // "test result: ok. 6 passed; 0 failed; 0 ignored; ..."
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let words: Vec<&str> = part.split_whitespace().collect();
                    if let [.., n, what] = words.as_slice() {
                        let n: u64 = n.parse().unwrap_or(0);
                        match *what {
                            "passed" => passed += n,
                            "failed" => failed += n,
                            "ignored" => ignored += n,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let st = child.wait()?;
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

fn quiet_ok(c: &mut Command) -> bool {
    c.stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

fn build() -> Result<()> {
    setup()?;
    run(Command::new(cargo()).args(["build", "--release", "-p", "egress-userspace"]))
}

fn setup() -> Result<()> {
    // 1. Nightly toolchain with rust-src (aya-build compiles the eBPF crate with
    //    `-Z build-std=core`).
    let sysroot = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output();
    let sysroot = match sysroot {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => {
            eprintln!("xtask setup: installing the nightly toolchain");
            run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
            let o = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output()?;
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
        }
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask setup: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    // 2. bpf-linker, linked against the nightly's own libLLVM (Debian's LLVM is too old).
    // Run it the way rustc does (rustup puts the nightly's lib dir on the loader path).
    if !quiet_ok(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"])) {
        let lib = fs::read_dir(sysroot.join("lib"))
            .context("list the nightly sysroot's lib directory")?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
            .context("no libLLVM.so.* in the nightly sysroot")?;
        let major = lib
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("libLLVM.so."))
            .and_then(|v| v.split('.').next())
            .context("cannot read the LLVM version from the libLLVM file name")?
            .to_string();
        let cargo_home = env::var("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"));
        // Lasting place: bpf-linker keeps an rpath to it.
        let prefix = cargo_home.join(format!("egress-llvm-{major}"));
        fs::create_dir_all(prefix.join("lib"))?;
        let link = prefix.join("lib/libLLVM.so");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).context("symlink libLLVM.so")?;
        // Also under its SONAME, so the installed binary loads outside rustup too.
        if let Some(name) = lib.file_name() {
            let soname = prefix.join("lib").join(name);
            let _ = fs::remove_file(&soname);
            std::os::unix::fs::symlink(&lib, &soname).context("symlink libLLVM SONAME")?;
        }
        eprintln!("xtask setup: installing bpf-linker against LLVM {major} ({})", lib.display());
        run(Command::new(cargo())
            .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix))?;
    }

    // 3. Debian packages the tests and demo use (only when missing).
    apt_install(&[
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("man", "man-db"),
        ("col", "bsdextrautils"),
        ("dpkg-deb", "dpkg"),
        ("systemd-analyze", "systemd"),
        // kubectl renders the kustomize base (tests/tests/deploy.rs): Debian's
        // kubernetes-client when the machine has no kubectl.
        ("kubectl", "kubernetes-client"),
    ])?;

    // 4. The Kubernetes manifests' validator (PyPI; it carries the API schemas).
    if !quiet_ok(Command::new("sh").args(["-c", "command -v kubernetes-validate"])) {
        eprintln!("xtask setup: installing kubernetes-validate (PyPI)");
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--root-user-action=ignore", "kubernetes-validate==1.37.0"]))?;
    }
    Ok(())
}

/// Installs the Debian packages whose command is missing: (command, package).
pub(crate) fn apt_install(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !quiet_ok(Command::new("sh").args(["-c", &format!("command -v {cmd}")])))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-q"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}
