//! `egress counters --watch`.

use egress::{counters, dataplane};

/// `egress counters --watch`: a frame every `interval` seconds (cleared screen on
/// a terminal; JSON lines with --json), until Ctrl-C or `count` frames.
pub fn watch_counters(t: &dataplane::Target, interval: f64, count: Option<u64>, json: bool) -> anyhow::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let interval = std::time::Duration::from_secs_f64(interval.max(0.1));
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(std::time::Instant, dataplane::Readout)> = None;
    for frame in 0.. {
        if count.is_some_and(|n| frame >= n) {
            break;
        }
        if frame > 0 {
            std::thread::sleep(interval);
        }
        let r = dataplane::read_counters(t)?;
        let now = std::time::Instant::now();
        let secs = prev.as_ref().map(|(at, _)| now.duration_since(*at).as_secs_f64()).unwrap_or(interval.as_secs_f64());
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", counters::counters_json(&r))?;
        } else {
            if tty {
                write!(out, "\x1b[H\x1b[2J")?;
            } else if frame > 0 {
                writeln!(out)?;
            }
            write!(out, "{}", counters::watch_table(prev.as_ref().map(|p| &p.1), &r, secs))?;
        }
        out.flush()?;
        prev = Some((now, r));
    }
    Ok(())
}
