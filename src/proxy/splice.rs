//! A body relayed between two plain TCP sockets without passing through user space: Linux's
//! `splice(2)` moves the bytes from one socket into a pipe and from the pipe into the other
//! socket as references to the kernel's own pages, so the gateway copies none of them (the
//! copying relay reads each byte into its buffer and writes it out again).
//!
//! Used by the fast path for an upload larger than the replay buffer, when neither side is
//! TLS; downloads are copied (the fast path's module says why). Elsewhere (another OS, or no
//! pipe to be had) [`Pipe::new`] gives `None`, and the upload is copied too.

use std::io;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe's capacity, asked for (Linux's default limit for an unprivileged process); a
/// smaller pipe (64 KiB by default, less for a user over its pipe allowance) only means more
/// calls.
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1024 * 1024;

/// Which side a relay broke on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broke {
    /// The side read from ended, failed or sent nothing for the idle time before the body's
    /// end.
    Source,
    /// The side written to failed, or took nothing for the idle time.
    Sink,
}

/// A pipe the relay passes through, empty between relays.
#[cfg(target_os = "linux")]
pub(crate) struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

#[cfg(not(target_os = "linux"))]
pub(crate) enum Pipe {}

impl Pipe {
    /// A new non-blocking pipe, or `None` where there is no `splice(2)` or no pipe to be had
    /// (out of file descriptors).
    #[cfg(target_os = "linux")]
    pub(crate) fn new() -> Option<Pipe> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two descriptors for `pipe2` to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: `pipe2` succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a smaller pipe only means more calls.
        // SAFETY: `F_SETPIPE_SZ` on an open pipe takes an int and touches no memory of ours.
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&write), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        Some(Pipe { read, write })
    }

    /// A new pipe: never on this OS.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn new() -> Option<Pipe> {
        None
    }

    /// Moves exactly `len` bytes from `from` to `to`, calling `moved` with the count of each
    /// write to `to` that moved some; a wait on either side longer than `idle` breaks the relay, which then
    /// tells how many bytes it had taken from `from`. The pipe is filled only when empty, so a
    /// `splice` into it that would block says `from` has nothing yet (and not that the pipe is
    /// full), and the socket's readiness is cleared rightly.
    #[cfg(target_os = "linux")]
    pub(crate) async fn relay(
        &self,
        from: &TcpStream,
        to: &TcpStream,
        len: u64,
        idle: Duration,
        moved: impl Fn(usize),
    ) -> Result<(), (Broke, u64)> {
        use std::os::fd::AsRawFd;
        let (pipe_in, pipe_out) = (self.write.as_raw_fd(), self.read.as_raw_fd());
        let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(PIPE_SIZE);
            let mut held = loop {
                match from.try_io(Interest::READABLE, || splice(from_fd, pipe_in, want)) {
                    Ok(0) => return Err((Broke::Source, len - left)),
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !matches!(tokio::time::timeout(idle, from.readable()).await, Ok(Ok(()))) {
                            return Err((Broke::Source, len - left));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err((Broke::Source, len - left)),
                }
            };
            left -= held as u64;
            while held > 0 {
                match to.try_io(Interest::WRITABLE, || splice(pipe_out, to_fd, held)) {
                    // A socket that takes nothing from a non-empty pipe is not going to.
                    Ok(0) => return Err((Broke::Sink, len - left)),
                    Ok(n) => {
                        held -= n;
                        moved(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !matches!(tokio::time::timeout(idle, to.writable()).await, Ok(Ok(()))) {
                            return Err((Broke::Sink, len - left));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err((Broke::Sink, len - left)),
                }
            }
        }
        Ok(())
    }

    /// Never called: there is no pipe on this OS.
    #[cfg(not(target_os = "linux"))]
    pub(crate) async fn relay(
        &self,
        _from: &TcpStream,
        _to: &TcpStream,
        _len: u64,
        _idle: Duration,
        _moved: impl Fn(usize),
    ) -> Result<(), (Broke, u64)> {
        match *self {}
    }
}

/// One non-blocking `splice(2)` of up to `len` bytes from `from` to `to`.
#[cfg(target_os = "linux")]
fn splice(from: std::os::fd::RawFd, to: std::os::fd::RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are what `splice` takes for sockets and pipes; the descriptors are
    // open for the call (borrowed from their owners) and no memory of ours is touched.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
