//! Input limits and the command line's manners: the rule-count limit on the
//! large-file path, the file-size cap (files, pipes, devices), `--rules
//! /dev/stdin`, one very long line, and a closed stdout ending a command quietly.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use egress_tests::{egress_bin, temp_file};

fn egress(args: &[&str]) -> Output {
    Command::new(egress_bin()).args(args).output().unwrap_or_else(|e| panic!("run egress {args:?}: {e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The defect: the chunked parser of large files skipped the limit, so 300,000
/// rules passed `check`. Both paths now refuse, with the line of the first rule
/// past the limit.
#[test]
fn more_rules_than_a_file_may_hold_are_refused() {
    let mut text = String::from("default_policy = \"allow\"\n");
    for i in 0..300_000 {
        text.push_str(&format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\ndst = \"198.51.100.{}/32\"\n", i % 256));
    }
    let f = temp_file("many.toml", &text);
    let o = egress(&["check", "--rules", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = 2 + 4 * egress_common::MAX_RULES as usize;
    let want = format!(
        "{}:{line}: field 'rule': 300000 rules, more than the {} a rule file may hold (this is rule {})",
        f.display(),
        egress_common::MAX_RULES,
        egress_common::MAX_RULES + 1
    );
    assert!(stderr(&o).contains(&want), "{}\nwanted: {want}", stderr(&o));
}

#[test]
fn the_size_cap_holds_for_files_pipes_and_devices() {
    // A file over the cap is refused from its size, before it is read.
    let f = temp_file("big.toml", &format!("default_policy = \"allow\"\n#{}\n", "x".repeat(2 << 20)));
    let o = egress(&["check", "--rules", f.to_str().unwrap(), "--max-file-size", "1M"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("2.0 MiB, more than the 1 MiB a rule file may be (--max-file-size raises the limit)"), "{}", stderr(&o));
    // Raised, the same file is fine (a comment line of 2 MiB is over the line
    // limit, so this one has shorter lines).
    let lines = "#".to_string() + &"y".repeat(1000) + "\n";
    let f = temp_file("big2.toml", &format!("default_policy = \"allow\"\n{}", lines.repeat(2100)));
    assert_eq!(egress(&["check", "--rules", f.to_str().unwrap()]).status.code(), Some(0));
    let o = egress(&["check", "--rules", f.to_str().unwrap(), "--max-file-size", "1M"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A 300 MB file (sparse: its size is what counts) is refused from its size.
    let big = temp_file("huge.toml", "");
    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(300_000_000).unwrap();
    let o = egress(&["check", "--rules", big.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("286.1 MiB, more than the 64 MiB a rule file may be"), "{}", stderr(&o));
    std::fs::remove_file(&big).unwrap();
    // A device that never ends stops at the cap.
    let o = egress(&["check", "--rules", "/dev/zero"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("/dev/zero: more than 64 MiB read, more than the 64 MiB a rule file may be"), "{}", stderr(&o));
    // One very long line.
    let f = temp_file("line.toml", &format!("default_policy = \"allow\"\n# {}\n", "z".repeat(5 << 20)));
    let o = egress(&["check", "--rules", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(":2: a line of 5242882 bytes, longer than the 4 MiB a line may be"), "{}", stderr(&o));
    // Bad sizes are usage errors.
    let o = egress(&["check", "--rules", "/dev/null", "--max-file-size", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("'lots' is not a size"), "{}", stderr(&o));
}

#[test]
fn rules_from_a_pipe_are_read() {
    let mut child = Command::new(egress_bin())
        .args(["check", "--json", "--rules", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"default_policy = \"deny\"\n[[rule]]\nname = \"dns\"\naction = \"allow\"\nprotocol = \"udp\"\nports = 53\n").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["valid"].as_bool(), v["rules"].as_u64()), (Some(true), Some(1)), "{v}");
}

/// The defect: `egress status --json | head -c 0` panicked with a backtrace. A
/// closed stdout now ends every printing command quietly, as grep: killed by
/// SIGPIPE, nothing on stderr. (A pipe whose reader is gone before the command
/// starts, so that every write fails.)
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let f = temp_file("r.toml", "default_policy = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nprotocol = \"udp\"\nports = 9\n");
    let f = f.to_str().unwrap();
    let cases: [&[&str]; 5] =
        [&["check", "--rules", f], &["check", "--json", "--rules", f], &["status", "--json"], &["status"], &["--help"]];
    for args in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(egress_bin()).args(args).stdout(writer).stderr(Stdio::piped()).output().unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "egress {args:?}: {err}");
        assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "egress {args:?}: {:?} {err}", o.status);
    }
}

/// Run as root, egress refuses rule files that other users can change (or that
/// sit in a folder others may write to), unless --allow-insecure-files.
#[test]
fn files_others_can_write_are_refused_as_root() {
    use std::os::unix::fs::PermissionsExt as _;
    egress_tests::need_root!("a root-owned rule file and chown");
    let text = "default_policy = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nprotocol = \"udp\"\nports = 9\n";
    let f = temp_file("r.toml", text);
    let path = f.to_str().unwrap();
    assert_eq!(egress(&["check", "--rules", path]).status.code(), Some(0));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = egress(&["check", "--rules", path]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is writable by its group or by everyone (mode 0666, uid 0)") && stderr(&o).contains("--allow-insecure-files"),
        "{}",
        stderr(&o)
    );
    let o = egress(&["check", "--rules", path, "--allow-insecure-files"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning:") && stderr(&o).contains("used anyway (--allow-insecure-files)"), "{}", stderr(&o));
    // Owned by another user.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
    let o = egress(&["check", "--rules", path]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is owned by a user other than root"), "{}", stderr(&o));
    // In a folder everyone may write to (no sticky bit: anyone could replace it).
    let dir = temp_file("r2.toml", text);
    let folder = dir.parent().unwrap();
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = egress(&["check", "--rules", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("which others may write to (mode 0777"), "{}", stderr(&o));
    // The sticky bit (as on /tmp) protects it.
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(egress(&["check", "--rules", dir.to_str().unwrap()]).status.code(), Some(0));
}

/// State files, lock files and pin folders are owner-only.
#[test]
fn state_and_pins_are_owner_only() {
    use std::os::unix::fs::MetadataExt as _;
    egress_tests::need_root!("network namespaces");
    let p = egress_tests::Pair::new("perm").unwrap();
    let out = p.apply_ok(&egress_tests::deny_udp(&[9]));
    let pinned = out.lines().find_map(|l| l.trim().strip_prefix("pinned at")).map(|s| s.trim().to_string()).unwrap();
    let mode = |path: &str| std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}")).mode() & 0o777;
    assert_eq!(mode("/run/egress"), 0o700);
    let key = pinned.rsplit('/').next().unwrap();
    assert_eq!(mode(&format!("/run/egress/{key}.json")), 0o600);
    assert_eq!(mode(&pinned), 0o700);
    for e in std::fs::read_dir(&pinned).unwrap().flatten() {
        let m = e.metadata().unwrap().mode() & 0o777;
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", e.path().display());
    }
}

/// Deep nesting (TOML and JSON) and oversized CIDR lists are errors, not crashes
/// or endless compiles.
#[test]
fn nesting_and_list_sizes_are_bounded() {
    let deep = format!("default_policy = \"allow\"\nx = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let f = temp_file("deep.toml", &deep);
    let o = egress(&["check", "--rules", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("recursion limit exceeded"), "{}", stderr(&o));
    let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let f = temp_file("deep.json", &json);
    let o = egress(&["import", "cloudstack", "--rules", f.to_str().unwrap(), "--default-policy", "allow"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not valid JSON: recursion limit exceeded"), "{}", stderr(&o));
    let many: Vec<String> = (0..70_000u32).map(|i| format!("\"10.{}.{}.0/24\"", i >> 8 & 0xff, i & 0xff)).collect();
    let f = temp_file(
        "many.toml",
        &format!("default_policy = \"allow\"\n[[rule]]\nname = \"big\"\naction = \"deny\"\ndst = [{}]\n", many.join(",")),
    );
    let o = egress(&["check", "--rules", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("rule 'big', field 'dst': 70000 CIDRs, more than the 65536 one list may hold"), "{}", stderr(&o));
    let src: Vec<String> = (0..2_000u32).map(|i| format!("\"192.0.{}.{}/32\"", i >> 8, i & 0xff)).collect();
    let dst: Vec<String> = (0..1_000u32).map(|i| format!("\"10.9.{}.{}/32\"", i >> 8, i & 0xff)).collect();
    let f = temp_file(
        "pairs.toml",
        &format!(
            "default_policy = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\nsrc = [{}]\ndst = [{}]\n",
            src.join(","),
            dst.join(",")
        ),
    );
    let o = egress(&["check", "--rules", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2000 sources x 1000 destinations = 2000000 pairs, more than the 1048576 one rule may hold"),
        "{}",
        stderr(&o)
    );
}
