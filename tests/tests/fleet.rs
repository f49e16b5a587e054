//! What a fleet deployment relies on: `egress run` following its config and
//! rule files mounted from a Kubernetes ConfigMap (the kubelet's atomic
//! `..data` symlink swap, reproduced exactly on disk), and the probes beside
//! the metrics (`/healthz`, `/readyz`) with the `egress_rules_file_applied`
//! metric. Needs root.

use std::path::{Path, PathBuf};

use egress_tests::{Daemon, Pair, deny_udp, http_get};
use serde_json::Value;

/// A ConfigMap volume as the kubelet writes it: the files in a timestamped
/// folder, `..data` a symlink to it, and each file name a symlink through
/// `..data`. An update writes a new folder, points `..data_tmp` at it,
/// renames that over `..data` (the one atomic step), and removes the old folder.
struct ConfigMap {
    dir: PathBuf,
    version: u32,
    current: Option<PathBuf>,
}

impl ConfigMap {
    fn new(tag: &str, files: &[(&str, &str)]) -> ConfigMap {
        let dir = std::env::temp_dir().join(format!("egress-cm-{tag}-{}-{}", std::process::id(), egress_tests::next_seq()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cm = ConfigMap { dir, version: 0, current: None };
        cm.update(files);
        cm
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let ts = self.dir.join(format!("..2026_12_01_20_00_{:02}.{:09}", self.version, self.version));
        std::fs::create_dir(&ts).unwrap();
        for (name, text) in files {
            std::fs::write(ts.join(name), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for ConfigMap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn port() -> u16 {
    30_000 + (std::process::id() % 20_000) as u16
}

fn readyz(ns: &str, port: u16) -> (u16, Value) {
    let (status, body) = http_get(ns, port, "/readyz");
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[test]
fn a_configmap_update_is_followed_and_readyz_says_what_is_enforced() {
    egress_tests::need_root!("network namespaces, eBPF");
    let p = Pair::new("fleet").expect("namespaces");
    p.static_neighbours().unwrap();
    let config =
        |ifaces: &[&str]| -> String { ifaces.iter().map(|i| format!("[[interface]]\nname = \"{i}\"\nrules = \"rules.toml\"\n")).collect() };
    let mut cm = ConfigMap::new("a", &[("egress.toml", &config(&[&p.a_if])), ("rules.toml", &deny_udp(&[6601]))]);
    let port = port();
    let d = Daemon::start(&p.a, &cm.path("egress.toml"), &["--metrics", &port.to_string()]);
    d.wait_msg("rules applied", 1);
    assert_eq!(p.udp(false, 6601, 3), 0);

    // Alive, and ready: the one interface applied with a healthy link.
    let (status, body) = http_get(&p.a, port, "/healthz");
    assert!(status.contains("200") && body.trim() == "ok", "{status} {body}");
    let (code, v) = readyz(&p.a, port);
    assert_eq!(code, 200, "{v}");
    let e = &v["attachments"][0];
    assert_eq!(
        (e["iface"].as_str(), e["link"].as_str(), e["file_applied"].as_bool()),
        (Some(p.a_if.as_str()), Some("attached"), Some(true)),
        "{v}"
    );
    let first = e["digest"].as_str().unwrap().to_string();

    // A ConfigMap update (the ..data swap): the new rules are enforced.
    cm.update(&[("egress.toml", &config(&[&p.a_if])), ("rules.toml", &deny_udp(&[6602]))]);
    d.wait_msg("rules replaced", 1);
    assert_eq!(p.udp(false, 6601, 3), 3);
    assert_eq!(p.udp(false, 6602, 3), 0);
    let (_, v) = readyz(&p.a, port);
    assert_ne!(v["attachments"][0]["digest"].as_str(), Some(first.as_str()), "{v}");

    // An invalid rule file: the old rules stay, still ready, but the body and
    // the metric say the file is not applied, and why.
    cm.update(&[
        ("egress.toml", &config(&[&p.a_if])),
        ("rules.toml", "default_policy = \"allow\"\n[[rule]]\nname = \"x\"\nports = \"70000\"\n"),
    ]);
    d.wait_for("the invalid file logged", 1, |l| l["message"].as_str().is_some_and(|m| m.contains("the running rules stay enforced")));
    assert_eq!(p.udp(false, 6602, 3), 0, "the old rules stay");
    let (code, v) = readyz(&p.a, port);
    assert_eq!(code, 200, "{v}");
    let e = &v["attachments"][0];
    assert_eq!(e["file_applied"], false, "{v}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("rules.toml:4")), "{v}");
    let (_, metrics) = http_get(&p.a, port, "/metrics");
    assert!(metrics.contains(&format!("egress_rules_file_applied{{iface=\"{}\",hook=\"tc-egress\"}} 0", p.a_if)), "{metrics}");

    // The config gains an interface that does not exist: not ready, and the body says which.
    cm.update(&[("egress.toml", &config(&[&p.a_if, "egnosuch0"])), ("rules.toml", &deny_udp(&[6602]))]);
    d.wait_for("the missing interface logged", 1, |l| l["message"].as_str().is_some_and(|m| m.contains("applied when it appears")));
    let (code, v) = readyz(&p.a, port);
    assert_eq!(code, 503, "{v}");
    let missing = v["attachments"].as_array().unwrap().iter().find(|e| e["iface"] == "egnosuch0").cloned().expect("the missing entry");
    assert_eq!((missing["ready"].as_bool(), missing["link"].as_str()), (Some(false), Some("not applied")), "{v}");
    let (_, metrics) = http_get(&p.a, port, "/metrics");
    assert!(metrics.contains(&format!("egress_rules_file_applied{{iface=\"{}\",hook=\"tc-egress\"}} 1", p.a_if)), "{metrics}");
}
