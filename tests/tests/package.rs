//! The Debian package (`cargo xtask package`), installed on this machine with
//! dpkg: the unit verifies, `man egress` renders, bash completes from the
//! installed script, the conffile is registered, and `dpkg -r` leaves the
//! rules enforced (as the README says). `cargo xtask test` builds the package
//! and names it in EGRESS_DEB. Needs root.

use std::process::{Command, Output};

use egress_tests::{Pair, deny_udp, temp_file};

fn sh(cmd: &str) -> Output {
    Command::new("sh").args(["-c", cmd]).output().expect("sh")
}

fn ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(o.status.success(), "{cmd}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Purges the package however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = sh("dpkg --purge egress >/dev/null 2>&1");
    }
}

#[test]
fn the_package_installs_verifies_documents_completes_and_leaves_enforcement_on_removal() {
    egress_tests::need_root!("dpkg, network namespaces, eBPF");
    let Ok(deb) = std::env::var("EGRESS_DEB") else {
        eprintln!("skipped: EGRESS_DEB not set (`cargo xtask test` builds the package and sets it)");
        return;
    };
    let _guard = Installed;
    ok(&format!("dpkg -i {deb}"));
    assert!(ok("/usr/sbin/egress --version").starts_with("egress "));
    assert!(ok("dpkg-query -W -f='${Conffiles}' egress").contains("/etc/egress/egress.toml"));

    // The unit systemd will run.
    let v = sh("systemd-analyze verify /lib/systemd/system/egress.service");
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success() && !err.contains("egress.service"), "systemd-analyze verify: {err}");
    assert!(ok("cat /lib/systemd/system/egress.service").contains("ExecStart=/usr/sbin/egress run --config /etc/egress/egress.toml"));

    // The manual, through man's own search path.
    let page = ok("MANWIDTH=100 man egress | col -b");
    assert!(page.contains("egress - Enforce egress rules") && page.contains("egress-apply(1)"), "{page}");
    assert!(ok("MANWIDTH=100 man egress-run | col -b").contains("[[interface]]"));

    // bash completion from the installed script.
    let comp = ok("bash -c 'source /usr/share/bash-completion/completions/egress; COMP_WORDS=(egress app); COMP_CWORD=1; \
         COMP_LINE=\"egress app\"; COMP_POINT=10; _egress egress app egress; printf \"%s\\n\" \"${COMPREPLY[@]}\"'");
    assert_eq!(comp.trim(), "apply");

    // Rules applied with the installed binary stay enforced after `dpkg -r`.
    let p = Pair::new("pkg").expect("namespaces");
    p.static_neighbours().unwrap();
    let rules = temp_file("rules.toml", &deny_udp(&[6701]));
    ok(&format!("ip netns exec {} /usr/sbin/egress apply --iface {} --rules {}", p.a, p.a_if, rules.display()));
    assert_eq!(p.udp(false, 6701, 3), 0);
    ok("dpkg -r egress");
    assert!(!std::path::Path::new("/usr/sbin/egress").exists(), "the binary is gone");
    assert!(std::path::Path::new("/etc/egress/egress.toml").exists(), "a conffile stays until purge");
    assert_eq!(p.udp(false, 6701, 3), 0, "still enforced after removal");
    ok("dpkg --purge egress");
    assert!(!std::path::Path::new("/etc/egress/egress.toml").exists(), "purged");
}
