//! Debug mode's log (`apply --debug`): the classifier's `_dbg` twin writes, with
//! aya-log, why it drops a packet it cannot parse into aya-log's ring buffer,
//! pinned beside the deny events (shared by every generation, so a reader
//! follows reloads). Read with aya-log's reader, attached through a program
//! that uses the pinned buffer.

use std::{
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::MapData;
use aya_log::EbpfLogger;
use egress_common::MAP_DEBUG_LOG;

use super::{
    DataplaneError, Result,
    env::Target,
    map_err,
    state::{State, events_dir, read_state},
};

/// One record of the program's log.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub level: log::Level,
    pub message: String,
}

/// Collects aya-log's records (aya-log hands them to a `log::Log`).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<LogLine>>>);

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(LogLine { level: record.level(), message: record.args().to_string() });
        }
    }
    fn flush(&self) {}
}

/// A reader of one attachment's debug log. One reader at a time (as events).
pub struct DebugLog {
    logger: EbpfLogger<Sink>,
    sink: Sink,
}

/// Opens the debug log of the rule set enforced at `t`; an error when it was
/// applied without debug mode.
pub fn open_debug_log(t: &Target) -> Result<(State, DebugLog)> {
    let st = read_state(&t.key())?.ok_or_else(|| DataplaneError::Other(format!("no rules on {} ({})", t.iface, t.hook)))?;
    if !st.debug {
        return Err(DataplaneError::Other(format!(
            "the rules on {} ({}) were applied without --debug: nothing writes a debug log there; apply them again with --debug",
            t.iface, t.hook
        )));
    }
    let path = events_dir(&st.key).join(MAP_DEBUG_LOG);
    let md = MapData::from_pin(&path).map_err(map_err(format!("open the debug log {}", path.display())))?;
    let map_id = md.info().map_err(map_err("read the debug log's map id"))?.id();
    // The newest loaded program that writes into this buffer (any generation's will do).
    let prog_id = aya::programs::loaded_programs()
        .filter_map(std::result::Result::ok)
        .filter(|p| p.map_ids().ok().flatten().is_some_and(|ids| ids.contains(&map_id)))
        .map(|p| p.id())
        .max()
        .ok_or_else(|| DataplaneError::Other(format!("no loaded program writes the debug log {}", path.display())))?;
    let sink = Sink::default();
    let logger = EbpfLogger::init_from_id_with_logger(prog_id, sink.clone())
        .map_err(|e| DataplaneError::Other(format!("open the debug log of program {prog_id}: {e}")))?;
    Ok((st, DebugLog { logger, sink }))
}

impl DebugLog {
    /// The records waiting now, after waiting up to `timeout` for the first.
    pub fn next_batch(&mut self, timeout: Duration) -> Vec<LogLine> {
        let mut out = self.drain();
        if out.is_empty() && !timeout.is_zero() {
            let mut pfd = libc::pollfd { fd: self.logger.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
            out = self.drain();
        }
        out
    }

    fn drain(&mut self) -> Vec<LogLine> {
        self.logger.flush();
        self.sink.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }
}
