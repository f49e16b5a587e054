//! The container image (`cargo xtask image`) run with podman on this machine:
//! its entrypoint (`egress run --config /etc/egress/egress.toml`) applies the
//! mounted config to a test namespace's interface, with only the systemd
//! unit's capabilities, /sys/fs/bpf, /run/egress and /run/netns mounted; the
//! probes answer in the container's network namespace; stopping the container
//! leaves the rules enforced. `cargo xtask test` builds the image and names it
//! in EGRESS_IMAGE (or, when this machine cannot build one, says why in
//! EGRESS_IMAGE_ERROR). Needs root.

use std::{process::Command, time::Duration};

use egress_tests::{Pair, deny_udp, egress_ok_in, http_get};

/// The container, removed however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["--runtime", "runc", "rm", "-f", &self.0]).output();
    }
}

#[test]
fn the_image_enforces_on_a_test_namespace_with_the_units_capabilities() {
    egress_tests::need_root!("podman, network namespaces, eBPF");
    let image = match (std::env::var("EGRESS_IMAGE"), std::env::var("EGRESS_IMAGE_ERROR")) {
        (Ok(i), _) => i,
        (Err(_), Ok(why)) => {
            eprintln!("skipped: this machine could not build the image: {why}");
            return;
        }
        _ => {
            eprintln!("skipped: EGRESS_IMAGE not set (`cargo xtask test` builds the image and sets it)");
            return;
        }
    };
    let p = Pair::new("img").expect("namespaces");
    p.static_neighbours().unwrap();
    let cfg = std::env::temp_dir().join(format!("egress-image-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("egress.toml"), format!("[[interface]]\nname = \"{}\"\nrules = \"rules.toml\"\n", p.a_if)).unwrap();
    std::fs::write(cfg.join("rules.toml"), deny_udp(&[6801])).unwrap();
    std::fs::create_dir_all("/run/egress").unwrap();
    let name = format!("egress-test-{}", std::process::id());
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    // runc: this machine's cgroups are a v1/v2 hybrid, which crun refuses.
    // The ulimits: podman's defaults exceed this machine's hard limits.
    let out = Command::new("podman")
        .args(["--runtime", "runc", "run", "-d", "--name", &name])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
        .args(["--cap-drop=all", "--cap-add=CAP_BPF,CAP_NET_ADMIN,CAP_SYS_ADMIN,CAP_SYS_RESOURCE"])
        .arg(format!("--network=ns:/run/netns/{}", p.b))
        .arg(format!("--volume={}:/etc/egress:ro", cfg.display()))
        .args(["--volume=/sys/fs/bpf:/sys/fs/bpf", "--volume=/run/egress:/run/egress", "--volume=/run/netns:/run/netns"])
        .arg(&image)
        .args(["--netns", &p.a, "--metrics", &format!("127.0.0.1:{port}")])
        .output()
        .expect("podman");
    assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
    let _c = Container(name.clone());
    let logs = || String::from_utf8_lossy(&Command::new("podman").args(["logs", &name]).output().unwrap().stderr).into_owned();

    // Ready once the rules are applied, as the probe says.
    let t = std::time::Instant::now();
    let ready = loop {
        let b = p.b.clone();
        let r = std::thread::spawn(move || http_get(&b, port, "/readyz")).join();
        if let Ok((status, body)) = r
            && status.contains("200")
        {
            break body;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not ready within 30 s:\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        (v["attachments"][0]["iface"].as_str(), v["attachments"][0]["link"].as_str()),
        (Some(p.a_if.as_str()), Some("attached")),
        "{v}"
    );
    assert_eq!(p.udp(false, 6801, 3), 0, "denied by the rules the container applied");
    assert_eq!(p.udp(false, 6802, 3), 3);

    // Stopping the container leaves the rules enforced (pinned on the host).
    let st = Command::new("podman").args(["--runtime", "runc", "stop", "-t", "5", &name]).output().unwrap();
    assert!(st.status.success());
    assert!(logs().contains("enforcement stays in place"), "{}", logs());
    assert_eq!(p.udp(false, 6801, 3), 0, "still enforced");
    assert!(egress_ok_in(&p.a, &["status"]).contains(&p.a_if));
    egress_ok_in(&p.a, &["detach", "--iface", &p.a_if]);
    let _ = std::fs::remove_dir_all(&cfg);
}
