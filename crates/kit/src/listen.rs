//! Where a service's listener comes from.
//!
//! `tessera up` binds each child's socket itself and hands it over as an
//! inherited file descriptor named by [`LISTEN_FD_ENV`]: the port stays the
//! same across restarts and connections made while a child restarts wait in
//! the socket's backlog instead of being refused. `tessera serve` on its own
//! binds the configured address. Tests bind port 0. A simulation passes its
//! own [`axum::serve::Listener`] to [`crate::http::serve`].

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Names the inherited listening socket's file descriptor.
pub const LISTEN_FD_ENV: &str = "TESSERA_LISTEN_FD";
/// Names the inherited admin socket's descriptor, for a role with an admin
/// port of its own (the gateway).
pub const ADMIN_LISTEN_FD_ENV: &str = "TESSERA_ADMIN_LISTEN_FD";

/// The inherited listener if there is one, else a fresh one on `addr`.
pub async fn inherited_or_bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    inherited_or_bind_from(LISTEN_FD_ENV, addr).await
}

/// The inherited admin listener if there is one, else a fresh one on `addr`.
pub async fn admin_inherited_or_bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    inherited_or_bind_from(ADMIN_LISTEN_FD_ENV, addr).await
}

async fn inherited_or_bind_from(var: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    match std::env::var(var) {
        Ok(fd) => {
            let fd: i32 = fd.parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{var}={fd} is not a file descriptor"),
                )
            })?;
            from_fd(fd)
        }
        Err(_) => TcpListener::bind(addr).await,
    }
}

#[cfg(unix)]
fn from_fd(fd: i32) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: `tessera up` opened this descriptor as a listening TCP socket
    // and passed it to this process alone; nothing else here owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

#[cfg(not(unix))]
fn from_fd(_fd: i32) -> std::io::Result<TcpListener> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "inherited listeners need a Unix platform",
    ))
}
