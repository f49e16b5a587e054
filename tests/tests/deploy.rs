//! The Kubernetes manifests (`deploy/kubernetes/base`), offline: the kustomize
//! base renders (`kubectl kustomize`), every object validates strictly against
//! the Kubernetes versions the README claims (kubernetes-validate, from PyPI,
//! with the API schemas inside it), and the pieces fit together: the
//! ServiceMonitor finds the Service, the probes and the scrape use the metrics
//! port egress listens on, the capabilities are the systemd unit's, and the
//! shipped rule file is one egress accepts. `cargo xtask setup` installs the
//! tools.

use std::process::Command;

use egress_tests::egress_bin;
use serde_json::Value;

const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/base");
/// The versions the README claims (kubernetes-validate carries their schemas).
const VERSIONS: [&str; 5] = ["1.29.0", "1.31.0", "1.33.0", "1.35.0", "1.37.0"];

fn render() -> String {
    let out = Command::new("kubectl").args(["kustomize", BASE]).output().expect("kubectl (cargo xtask setup installs it)");
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rendered objects, through PyYAML (a dependency of kubernetes-validate).
fn objects(yaml: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut c = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    c.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kustomize_base_renders_and_validates_against_the_claimed_versions() {
    let yaml = render();
    let file = egress_tests::temp_file("rendered.yaml", &yaml);
    for v in VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", v])
            .arg(&file)
            .output()
            .expect("kubernetes-validate (cargo xtask setup installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{v}: {text}");
        for r in ["namespace/egress-system", "configmap/egress-config", "service/egress-metrics", "daemonset/egress"] {
            assert!(text.contains(&format!("passed for resource {r}")), "{v}: {r} not validated:\n{text}");
        }
    }
}

#[test]
fn the_manifests_fit_together() {
    let objs = objects(&render());
    let ds = kind(&objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["hostNetwork"], true);
    // The image's entrypoint runs `egress run --config /etc/egress/egress.toml` (xtask/src/image.rs).
    assert!(c["command"].is_null(), "the entrypoint stays");
    let image = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../xtask/src/image.rs")).unwrap();
    assert!(image.contains(r#"["/usr/sbin/egress","run","--config","/etc/egress/egress.toml"]"#));
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(args, ["--metrics=0.0.0.0:9977", "--log-format=json"]);
    assert!(c["image"].as_str().unwrap().starts_with("localhost/egress:"), "{}", c["image"]);
    assert_eq!(c["ports"][0]["containerPort"], 9977);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!((c[probe]["httpGet"]["path"].as_str(), c[probe]["httpGet"]["port"].as_str()), (Some(path), Some("metrics")), "{probe}");
    }
    // The unit's capabilities, no more.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/egress.service")).unwrap();
    let unit_caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    let caps: Vec<String> =
        c["securityContext"]["capabilities"]["add"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(caps, unit_caps);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    // Mounts: the config from the ConfigMap, the node's bpffs and state.
    let mounts: Vec<(&str, &str)> =
        c["volumeMounts"].as_array().unwrap().iter().map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap())).collect();
    for want in [("config", "/etc/egress"), ("bpffs", "/sys/fs/bpf"), ("state", "/run/egress")] {
        assert!(mounts.contains(&want), "{mounts:?}");
    }
    let cm = kind(&objs, "ConfigMap");
    let vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(vol["configMap"]["name"], cm["metadata"]["name"], "no hash suffix: the kubelet updates the files in place");

    // The ServiceMonitor finds the Service, on the port it names.
    let svc = kind(&objs, "Service");
    let sm = kind(&objs, "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v, "Service label {k}");
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][k], v, "pod label {k}");
    }

    // The shipped rule file is one egress accepts.
    let rules = egress_tests::temp_file("rules.toml", cm["data"]["rules.toml"].as_str().unwrap());
    let out = Command::new(egress_bin()).args(["check", "--rules", rules.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cm["data"]["egress.toml"].as_str().unwrap().contains("rules = \"rules.toml\""));
}
