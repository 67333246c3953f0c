//! systemd's readiness protocol (`Type=notify`): `READY=1` once the mount
//! is up, `STATUS=` lines while it drains, `STOPPING=1` when it is asked to
//! stop. One datagram to `$NOTIFY_SOCKET` each; nothing when the variable is
//! unset (not started by systemd), and a failed send changes nothing (the
//! service manager only learns less).

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=value` assignments).
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let addr = match path.as_encoded_bytes() {
        // An abstract socket name.
        [b'@', name @ ..] => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)
        }
        _ => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}
