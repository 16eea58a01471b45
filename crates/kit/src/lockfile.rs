//! Exclusive advisory locks on files (`flock`), for work that processes on
//! one machine must not do at once: schema migrations on a shared SQLite
//! file, key rotation, two `tessera up` on one data directory. The lock is
//! held as long as the returned file is open, and released by the kernel if
//! the process dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
}

fn flock(file: &File, operation: i32) -> io::Result<bool> {
    // SAFETY: flock on a descriptor `file` owns for the whole call.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Waits for the lock. Blocks the thread: call from a blocking context.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    let file = open(path)?;
    flock(&file, libc::LOCK_EX)?;
    Ok(file)
}

/// Takes the lock if it is free; `None` if another holder has it.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let file = open(path)?;
    Ok(flock(&file, libc::LOCK_EX | libc::LOCK_NB)?.then_some(file))
}

/// [`lock_exclusive`] without blocking the async runtime.
pub async fn lock_exclusive_async(path: &Path) -> io::Result<File> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || lock_exclusive(&path))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_not_taken_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = try_lock_exclusive(&path).unwrap();
        assert!(held.is_some());
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(held);
        assert!(try_lock_exclusive(&path).unwrap().is_some());
    }
}
