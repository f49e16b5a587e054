//! Completions and manual pages generated from the clap definitions
//! (`egress completions SHELL`, `egress man`): bash completes with them, man
//! renders them.

use std::process::Command;

use egress_tests::{egress_bin, temp_file};

fn egress_out(args: &[&str]) -> String {
    let out = Command::new(egress_bin()).args(args).output().expect("run egress");
    assert!(out.status.success(), "egress {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What bash completes for the words typed so far (the last one partial).
fn complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let arr = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
    let prog = format!(
        "source {}; COMP_WORDS=({arr}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; _egress egress '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.len() - 1,
        line.len(),
        words[words.len() - 1],
        words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash").args(["-c", &prog]).output().expect("bash");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completes_commands_and_flags() {
    let script = temp_file("egress.bash", &egress_out(&["completions", "bash"]));
    assert_eq!(complete(&script, &["egress", "app"]), ["apply"]);
    assert_eq!(complete(&script, &["egress", "apply", "--cgr"]), ["--cgroup"]);
    assert!(complete(&script, &["egress", "explain", "--proto", ""]).contains(&"icmpv6".to_string()));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(egress_out(&["completions", shell]).contains("egress"), "{shell}");
    }
}

/// man's output without its overstrikes (bold and underline as `c\bc`, `_\bc`).
fn plain(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    let mut back = false;
    for c in s.chars() {
        match c {
            '\u{8}' => back = true,
            c if back => {
                out.pop();
                out.push(c);
                back = false;
            }
            c => out.push(c),
        }
    }
    out.into_iter().collect()
}

#[test]
fn the_manual_pages_render() {
    let page = temp_file("egress.1", &egress_out(&["man"]));
    let out = Command::new("man").args(["-l", page.to_str().unwrap()]).env("MANWIDTH", "100").output().expect("man");
    let text = plain(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for want in ["NAME", "egress - Enforce egress rules", "SYNOPSIS", "SUBCOMMANDS", "egress-apply(1)"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let dir = std::env::temp_dir().join(format!("egress-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let st = Command::new(egress_bin()).args(["man", "--dir", dir.to_str().unwrap()]).status().unwrap();
    assert!(st.success());
    for page in ["egress.1", "egress-apply.1", "egress-run.1", "egress-explain.1", "egress-import-cloudstack.1"] {
        assert!(dir.join(page).is_file(), "{page}");
    }
    let apply = Command::new("man").args(["-l", dir.join("egress-apply.1").to_str().unwrap()]).output().unwrap();
    assert!(plain(&String::from_utf8_lossy(&apply.stdout)).contains("--cgroup"), "apply's page lists its options");
    let _ = std::fs::remove_dir_all(&dir);
}
