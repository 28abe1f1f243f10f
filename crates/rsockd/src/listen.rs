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
//! with a bounded stack, from a pool (threads are kept 10 s after a
//! session for the next one). Nothing in a session sets process-wide state.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// How long an idle session thread waits for the next connection.
const IDLE_LIFETIME: Duration = Duration::from_secs(10);

/// How long accepting pauses after an error (out of descriptors, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Descriptors a session holds at most (the client twice, the server
/// twice, two pipes), and those of the process itself.
const FDS_PER_SESSION: u64 = 8;
const FDS_OWN: u64 = 32;

pub fn run(opts: Options, l: &ListenOptions) -> Result<u8, Error> {
    raise_fd_limit(l.max as u64 * FDS_PER_SESSION + FDS_OWN);
    let config = Config::load(&opts).map_err(|e| Error::Session(SessionError::Config(e)))?;
    let mut current = Arc::new(config);
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
        let pool = Arc::new(Pool::default());
        let mut slot: Option<OwnedSemaphorePermit> = None;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = hup.recv() => match Config::load(&opts) {
                    Ok(c) => current = Arc::new(c),
                    Err(e) => diag::warn(format_args!("unable to reload, keeping the previous configuration: {e}")),
                },
                p = Arc::clone(&slots).acquire_owned(), if slot.is_none() => slot = p.ok(),
                r = listener.accept(), if slot.is_some() => match r {
                    Ok((socket, _)) => {
                        start(&pool, Arc::clone(&opts), Arc::clone(&current), socket, slot.take());
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

/// The pool's lock, even if a thread panicked holding it (it cannot: the
/// workspace aborts on panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `socket` on a thread of the pool, which holds `slot` until the
/// session ends.
fn start(
    pool: &Arc<Pool>,
    opts: Arc<Options>,
    config: Arc<Config>,
    socket: tokio::net::TcpStream,
    slot: Option<OwnedSemaphorePermit>,
) {
    let socket = match socket.into_std() {
        Ok(s) => s,
        Err(e) => return diag::warn(format_args!("unable to take an accepted socket: {e}")),
    };
    pool.run(Box::new(move || {
        let _slot = slot;
        // The session's own log line says what happened, errors included;
        // an error before it (no peer address) is only warned about.
        match Connection::accepted(socket) {
            Ok(conn) => {
                let _ = session::serve(&opts, &config, conn);
            }
            Err(e) => diag::warn(format_args!("{e}")),
        }
    }));
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads for the sessions: one is started when none is idle, and one
/// that finished a session waits `IDLE_LIFETIME` for the next before it
/// ends (starting a thread costs about as much as a short session). At
/// most `-n` sessions run at once, so there are at most about `-n`
/// threads.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    wake: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Threads waiting for a job; always at least `queue.len()`.
    idle: usize,
    queue: VecDeque<Job>,
}

impl Pool {
    fn run(self: &Arc<Self>, job: Job) {
        let mut st = lock(&self.state);
        if st.idle > st.queue.len() {
            st.queue.push_back(job);
            drop(st);
            self.wake.notify_one();
            return;
        }
        drop(st);
        let pool = Arc::clone(self);
        let thread = std::thread::Builder::new().name("session".into()).stack_size(SESSION_STACK);
        let r = thread.spawn(move || {
            let mut job = job;
            loop {
                job();
                match pool.next() {
                    Some(j) => job = j,
                    None => return,
                }
            }
        });
        // (The job, its socket and its slot are dropped with the closure.)
        if let Err(e) = r {
            diag::warn(format_args!("unable to start a session's thread: {e}"));
        }
    }

    /// The next job, or `None` when none came for `IDLE_LIFETIME`.
    fn next(&self) -> Option<Job> {
        let mut st = lock(&self.state);
        st.idle += 1;
        let deadline = Instant::now() + IDLE_LIFETIME;
        loop {
            if let Some(j) = st.queue.pop_front() {
                st.idle -= 1;
                return Some(j);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.idle -= 1;
                return None;
            }
            st = match self.wake.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Raises the soft limit on open files toward `want` (up to the hard
/// limit); warns when that is not enough for `-n` sessions.
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft >= want {
        return;
    }
    let new = want.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, new, hard).is_err() || new < want {
        diag::warn(format_args!(
            "open files limited to {}, -n wants {want}: sessions beyond the limit fail",
            if new < want { new } else { soft }
        ));
    }
}

/// s6's readiness notification: a newline on descriptor `n`, then close.
fn notify(n: i32) -> std::io::Result<()> {
    let fd = chainmail_sys::fd::adopt(n)?;
    chainmail_sys::fd::write_all(&fd, b"\n")
}
