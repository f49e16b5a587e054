//! systemd's notify protocol (Type=notify): a datagram to $NOTIFY_SOCKET. A no-op
//! when not started by systemd.

use std::os::unix::net::UnixDatagram;

pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let p = path.to_string_lossy().into_owned();
    let sent = if let Some(name) = p.strip_prefix('@') {
        // An abstract socket address.
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &p)
    };
    if let Err(e) = sent {
        tracing::debug!("sd_notify {msg}: {e}");
    }
}
