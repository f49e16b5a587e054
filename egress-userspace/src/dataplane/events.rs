//! Deny events from the kernel: the attachment's pinned ring buffer (shared by
//! every generation, so a reader follows reloads) and its counters.

use std::{os::fd::AsRawFd as _, time::Duration};

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use egress_common::{DenyEvent, DnsDenyEvent, EVENT_STATS_LEN, MAP_EVENT_STATS, MAP_EVENTS, ProcDenyEvent};

use super::{
    DataplaneError, Result,
    env::Target,
    map_err,
    state::{State, events_dir, read_state},
};

/// One event as read: the packet's, and for a DNS query denied by a rule by
/// name its question name (a longer record).
#[derive(Clone, Debug)]
pub struct Received {
    pub event: DenyEvent,
    pub qname: Option<String>,
    /// A socket call refused on a cgroup: the caller's pid and command name.
    pub caller: Option<(u32, String)>,
}

impl std::ops::Deref for Received {
    type Target = DenyEvent;
    fn deref(&self) -> &DenyEvent {
        &self.event
    }
}

/// A reader of one attachment's deny events. One reader at a time: each event
/// is handed to exactly one consumer of the ring buffer.
pub struct EventStream {
    rb: RingBuf<MapData>,
}

/// Opens the deny events of the rule set enforced at `t`.
pub fn open_events(t: &Target) -> Result<(State, EventStream)> {
    let st = read_state(&t.key())?.ok_or_else(|| DataplaneError::Other(format!("no rules on {} ({})", t.iface, t.hook)))?;
    let path = events_dir(&st.key).join(MAP_EVENTS);
    let md = MapData::from_pin(&path).map_err(map_err(format!("open the events ring buffer {}", path.display())))?;
    let rb = RingBuf::try_from(Map::RingBuf(md)).map_err(map_err("open the events ring buffer"))?;
    Ok((st, EventStream { rb }))
}

impl EventStream {
    /// The events waiting now, after waiting up to `timeout` for the first.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Vec<Received>> {
        let mut out = self.drain();
        if out.is_empty() {
            let mut pfd = libc::pollfd { fd: self.rb.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
            out = self.drain();
        }
        Ok(out)
    }

    fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(item) = self.rb.next() {
            if item.len() >= size_of::<DnsDenyEvent>() {
                // SAFETY: the program writes whole DnsDenyEvents (plain data); read unaligned.
                let d = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DnsDenyEvent>()) };
                let wire = &d.name.wire[..(d.name.len as usize).min(d.name.wire.len())];
                out.push(Received { event: d.event, qname: Some(super::dns::wire_to_text(wire)), caller: None });
            } else if item.len() == size_of::<ProcDenyEvent>() {
                // SAFETY: the program writes whole ProcDenyEvents (plain data); read unaligned.
                let d = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProcDenyEvent>()) };
                let comm = String::from_utf8_lossy(d.comm.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
                out.push(Received { event: d.event, qname: None, caller: Some((d.pid, comm)) });
            } else if item.len() >= size_of::<DenyEvent>() {
                // SAFETY: the program writes whole DenyEvents (plain data); read unaligned.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DenyEvent>()) };
                out.push(Received { event, qname: None, caller: None });
            }
        }
        out
    }
}

/// EVENT_STATS summed over the CPUs (`ES_*` slots); zeros before the first apply.
pub fn event_stats(st: &State) -> Result<Vec<u64>> {
    let path = events_dir(&st.key).join(MAP_EVENT_STATS);
    if !path.exists() {
        return Ok(vec![0; EVENT_STATS_LEN as usize]);
    }
    let md = MapData::from_pin(&path).map_err(map_err(format!("open {}", path.display())))?;
    let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(md)).map_err(map_err("open EVENT_STATS"))?;
    (0..EVENT_STATS_LEN).map(|i| arr.get(&i, 0).map(|v| v.iter().sum()).map_err(map_err("read EVENT_STATS"))).collect()
}

/// Unix time in ns of a CLOCK_MONOTONIC_COARSE time in ns (what the program
/// stamps). The offset between the clocks is taken from the precise monotonic
/// clock, so the same stamp converts to the same second on every read.
pub fn mono_ns_to_unix_ns(ns: u64) -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let real_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    real_now.saturating_sub(u128::from(mono_now.saturating_sub(ns)))
}
