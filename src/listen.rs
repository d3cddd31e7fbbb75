//! Binding a server's port and telling whoever started it where it listens:
//! shared by the Flight SQL and Postgres doors.

use std::io::Write;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::error::{Result, SessionqlError};

/// Binds `address`; returns the listener and the bound address (port 0 picks one).
pub async fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let cannot_listen = |error: std::io::Error| {
        SessionqlError::Invalid(format!("cannot listen on {address}: {error}"))
    };
    let listener = TcpListener::bind(address).await.map_err(cannot_listen)?;
    let bound = listener.local_addr().map_err(cannot_listen)?;
    Ok((listener, bound))
}

/// Prints `sessionql <door> server listening on <address>` on stdout, for
/// the caller that asked for port 0. A closed stdout (the starter stopped
/// reading) must not stop the server, so write errors are ignored rather than
/// panicking as `println!` would.
pub fn announce(door: &str, bound: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "sessionql {door} server listening on {bound}");
    let _ = stdout.flush();
}
