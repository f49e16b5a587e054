//! `egress log`'s lines: debug mode's records (why the program dropped a packet
//! it could not parse) as text or one JSON object per line.

use serde_json::json;

use crate::{counters::rfc3339, dataplane::LogLine, dataplane::now_unix, hook::Hook};

/// One record, stamped with the time it was read (aya-log records carry none).
pub fn format(line: &LogLine, iface: &str, hook: Hook, as_json: bool) -> String {
    let time = rfc3339(now_unix());
    if as_json {
        json!({"time": time, "iface": iface, "hook": hook.as_str(), "level": line.level.as_str().to_ascii_lowercase(),
               "message": line.message})
        .to_string()
    } else {
        format!("{time} {iface} ({hook}): {}", line.message)
    }
}
