//! `egress run` as a real process in a namespace, its JSON log collected, and
//! the CPU time a process used.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::egress_bin;

/// User + system CPU time of a process, in clock ticks (usually 10 ms); 0 if
/// the process is gone.
pub fn cpu_ticks(pid: i32) -> i64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the command name.
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// `egress run` as a real process inside a namespace, with JSON logs collected
/// from its stderr. Stopped on drop if still running.
pub struct Daemon {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `egress run --config CONFIG --log-format json --recheck 0.2 EXTRA...` in `ns`.
    pub fn start(ns: &str, config: &std::path::Path, extra: &[&str]) -> Daemon {
        use std::io::BufRead as _;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(egress_bin())
            .args(["run", "--config"])
            .arg(config)
            .args(["--log-format", "json", "--recheck", "0.2"])
            .args(extra)
            // Debug lines of egress itself: tests count reconciliations.
            .env("EGRESS_LOG", "egress=debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("start egress run: {e}"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                let v = serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({ "message": line, "raw": true }));
                if let Ok(mut g) = l2.lock() {
                    g.push(v);
                }
            }
        });
        Daemon { child, log, reader: Some(reader) }
    }

    /// Log lines so far.
    pub fn log(&self) -> Vec<serde_json::Value> {
        self.log.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Waits until `count` log lines satisfy `pred` (panics after 10 s with the log).
    pub fn wait_for(&self, what: &str, count: usize, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Searched in place: a long run's log is too big to copy every 20 ms.
            let hit = self.log.lock().ok().and_then(|g| g.iter().filter(|v| pred(v)).nth(count - 1).cloned());
            if let Some(v) = hit {
                return v;
            }
            if Instant::now() > deadline {
                panic!("egress run: no {count}x '{what}' within 10 s; log:\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `count`-th log line whose message contains `msg`.
    pub fn wait_msg(&self, msg: &str, count: usize) -> serde_json::Value {
        self.wait_for(msg, count, |v| v["message"].as_str().is_some_and(|m| m.contains(msg)))
    }

    pub fn dump(&self) -> String {
        self.log().iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    }

    pub fn pid(&self) -> i32 {
        // `ip netns exec` execs egress in place: the child is egress itself.
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit (at most 10 s) and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return st.code();
            }
            if Instant::now() > deadline {
                panic!("egress run did not exit; log:\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    /// SIGTERM (the service cleans up its locks), SIGKILL if it is still there after 2 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
