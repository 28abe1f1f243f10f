//! `-L`: the listener mode. rsockd binds the address itself, accepts, and
//! serves each connection on a thread of its own with the same session
//! code as the UCSPI mode (`session::serve`), so no process is started per
//! connection.
//!
//! - At most `-n` connections are served at once; at the limit rsockd
//!   stops accepting until one ends (the kernel's backlog holds the next
//!   ones, as under `tcpserver -c`).
//! - The files are read once at startup (an error there is fatal) and
//!   again on SIGHUP (an error then keeps the previous configuration, with
//!   a warning); a session uses the configuration current when it was
//!   accepted.
//! - SIGTERM stops accepting and exits at once: sessions in progress are
//!   cut.
//! - `-N FD`: a newline on FD once listening, then FD is closed (s6's
//!   readiness notification).
//!
//! The accept loop and the signals run on a current-thread tokio runtime;
//! the sessions are the blocking code of the UCSPI mode, each on a thread
//! with a bounded stack. Nothing in a session sets process-wide state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chainmail_sys::cli::EXIT_OK;
use chainmail_sys::diag;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::session::{self, Connection, SessionError};
use crate::{Error, ListenOptions, Options};

/// The stack of a session's thread: the session keeps its buffers on the
/// heap (1 KiB handshake buffers at most on the stack); the rest is for
/// the system resolver.
const SESSION_STACK: usize = 512 * 1024;

/// How long accepting pauses after an error (out of descriptors, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub fn run(opts: Options, l: &ListenOptions) -> Result<u8, Error> {
    let config = Config::load(&opts).map_err(|e| Error::Session(SessionError::Config(e)))?;
    let current = Mutex::new(Arc::new(config));
    let opts = Arc::new(opts);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Sys("start the runtime".into(), e))?;
    rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(l.addr).await.map_err(|e| Error::Sys(format!("listen on {}", l.addr), e))?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::Sys("catch SIGHUP".into(), e))?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Sys("catch SIGTERM".into(), e))?;
        if let Some(fd) = l.notify_fd {
            notify(fd).map_err(|e| Error::Sys(format!("notify readiness on fd {fd}"), e))?;
        }
        let slots = Arc::new(Semaphore::new(l.max));
        let mut slot: Option<OwnedSemaphorePermit> = None;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = hup.recv() => match Config::load(&opts) {
                    Ok(c) => *lock(&current) = Arc::new(c),
                    Err(e) => diag::warn(format_args!("unable to reload, keeping the previous configuration: {e}")),
                },
                p = Arc::clone(&slots).acquire_owned(), if slot.is_none() => slot = p.ok(),
                r = listener.accept(), if slot.is_some() => match r {
                    Ok((socket, _)) => {
                        let config = Arc::clone(&lock(&current));
                        start(Arc::clone(&opts), config, socket, slot.take());
                    }
                    Err(e) => {
                        diag::warn(format_args!("unable to accept: {e}"));
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                },
            }
        }
        Ok(EXIT_OK)
    })
}

/// The configuration, even if a thread panicked holding the lock (it
/// cannot: the workspace aborts on panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `socket` on a thread of its own, which holds `slot` until the
/// session ends.
fn start(opts: Arc<Options>, config: Arc<Config>, socket: tokio::net::TcpStream, slot: Option<OwnedSemaphorePermit>) {
    let socket = match socket.into_std() {
        Ok(s) => s,
        Err(e) => return diag::warn(format_args!("unable to take an accepted socket: {e}")),
    };
    let thread = std::thread::Builder::new().name("session".into()).stack_size(SESSION_STACK);
    let r = thread.spawn(move || {
        let _slot = slot;
        // The session's own log line says what happened, errors included;
        // an error before it (no peer address) is only warned about.
        match Connection::accepted(socket) {
            Ok(conn) => {
                let _ = session::serve(&opts, &config, conn);
            }
            Err(e) => diag::warn(format_args!("{e}")),
        }
    });
    if let Err(e) = r {
        diag::warn(format_args!("unable to start a session's thread: {e}"));
    }
}

/// s6's readiness notification: a newline on descriptor `n`, then close.
fn notify(n: i32) -> std::io::Result<()> {
    let fd = chainmail_sys::fd::adopt(n)?;
    chainmail_sys::fd::write_all(&fd, b"\n")
}
