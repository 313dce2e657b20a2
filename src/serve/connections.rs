//! The HTTP server's connections, kept within the descriptor limit: at most
//! `http.max_connections` are open at once; each request head must arrive within
//! `http.header_timeout_ms` (counted from the accept, or from a later request's first
//! byte); a connection with no request for `http.idle_timeout_ms` is closed. A connection
//! that arrives at the cap closes the one that has waited longest for a request, so a
//! flood of idle connections cannot lock `/healthz` out; one that is being answered is
//! never cut short.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::Request;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Descriptors that `http.max_connections` must leave to everything else: folder files,
/// cameras, sinks, the model watcher, the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The process's limit on open descriptors (systemd's `LimitNOFILE`); None when unlimited.
pub fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit through a valid pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What `/metrics` exports about connections.
#[derive(Default)]
pub struct ConnectionCounters {
    pub open: AtomicU64,
    /// Closed for sending no complete request head in time.
    pub header_timeouts: AtomicU64,
    /// Closed after waiting too long for a request.
    pub idle_timeouts: AtomicU64,
    /// Closed to make room for a new connection at the cap.
    pub evicted: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// The listener `axum::serve` takes connections from.
pub struct Connections {
    listener: TcpListener,
    limits: Limits,
    permits: Arc<Semaphore>,
    open: Arc<Registry>,
    counters: Arc<ConnectionCounters>,
    /// Accepting fails (descriptors exhausted): logged when it starts and when it ends.
    accept_failing: bool,
}

impl Connections {
    pub fn new(listener: TcpListener, limits: Limits, counters: Arc<ConnectionCounters>) -> Self {
        Connections {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            open: Arc::default(),
            counters,
            accept_failing: false,
        }
    }

    async fn accept_stream(&mut self) -> (TcpStream, std::net::SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if std::mem::take(&mut self.accept_failing) {
                        tracing::info!("http: accepting connections again");
                    }
                    return accepted;
                }
                // The client gave up before the accept: nothing to wait for.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    self.counters.accept_errors.fetch_add(1, Relaxed);
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        tracing::warn!("http: cannot accept connections: {e}; retrying every 250 ms");
                    }
                    // The connection waits in the kernel's queue meanwhile.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

impl Listener for Connections {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, std::net::SocketAddr) {
        let (stream, peer) = self.accept_stream().await;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.open.evict_longest_waiting() {
                    self.counters.evicted.fetch_add(1, Relaxed);
                }
                // Until the evicted one has closed; when every connection is being answered,
                // until the first answer is done.
                self.permits.clone().acquire_owned().await.expect("the connection semaphore is never closed")
            }
        };
        let shared = Arc::new(Shared::default());
        let id = self.open.insert(shared.clone());
        self.counters.open.fetch_add(1, Relaxed);
        let conn = Conn {
            stream,
            shared,
            id,
            registry: self.open.clone(),
            limits: self.limits,
            timer: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
            counters: self.counters.clone(),
            _permit: permit,
        };
        (conn, peer)
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// The open connections, for eviction.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Shared>>>,
}

impl Registry {
    fn insert(&self, shared: Arc<Shared>) -> u64 {
        let id = self.next_id.fetch_add(1, Relaxed);
        lock(&self.conns).insert(id, shared);
        id
    }

    /// Closes the connection that has waited longest for a request; false when every
    /// connection is being answered.
    fn evict_longest_waiting(&self) -> bool {
        let conns = lock(&self.conns);
        let victim = conns
            .values()
            .filter_map(|shared| {
                let state = shared.state();
                (state.in_flight == 0 && !state.evicted).then_some((state.since, shared))
            })
            .min_by_key(|(since, _)| *since);
        let Some((_, shared)) = victim else { return false };
        // The registry's lock keeps the victim from closing meanwhile, not from taking a
        // request: look again under its own lock.
        let mut state = shared.state();
        if state.in_flight > 0 {
            return false;
        }
        state.evicted = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        true
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

#[derive(Debug)]
struct State {
    /// Requests being answered; no timeout runs meanwhile.
    in_flight: u32,
    /// Waiting for a request head to complete (else for the next request).
    head: bool,
    /// When the current wait began.
    since: Instant,
    evicted: bool,
    /// The connection task's, woken on eviction.
    waker: Option<Waker>,
}

impl Default for State {
    /// A new connection: its first request head is due within the header timeout.
    fn default() -> Self {
        State { in_flight: 0, head: true, since: Instant::now(), evicted: false, waker: None }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One accepted connection: the TCP stream, with the timeouts and the cap's permit.
pub struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    id: u64,
    registry: Arc<Registry>,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    counters: Arc<ConnectionCounters>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn evicted(&self) -> Option<io::Error> {
        self.shared.state().evicted.then(|| {
            io::Error::new(io::ErrorKind::ConnectionAborted, "closed: a new connection needed its place")
        })
    }

    /// Called when the stream has nothing to give or take: the error that closes the
    /// connection when its wait has run out, after arming the timer for the rest of it.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let (deadline, head) = {
            let mut state = self.shared.state();
            if state.evicted {
                drop(state);
                return self.evicted();
            }
            if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.waker = Some(cx.waker().clone());
            }
            if state.in_flight > 0 {
                return None;
            }
            let wait = if state.head { self.limits.header_timeout } else { self.limits.idle_timeout };
            (state.since + wait, state.head)
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready().then(|| {
            let (counter, message) = if head {
                (
                    &self.counters.header_timeouts,
                    "closed: no complete request head within http.header_timeout_ms",
                )
            } else {
                (&self.counters.idle_timeouts, "closed: no request within http.idle_timeout_ms")
            };
            counter.fetch_add(1, Relaxed);
            io::Error::new(io::ErrorKind::TimedOut, message)
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.evicted() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => this.expired(cx).map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let mut state = this.shared.state();
                if state.in_flight == 0 && !state.head {
                    // The first byte of the next request: its head is now due.
                    state.head = true;
                    state.since = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.evicted() {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.stream).poll_write(cx, data) {
            // A client that stops reading an answer is waited for no longer than an idle one.
            Poll::Pending => this.expired(cx).map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.evicted() {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.expired(cx).map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        lock(&self.registry.conns).remove(&self.id);
        self.counters.open.fetch_sub(1, Relaxed);
    }
}

/// A request's handle on its connection (`ConnectInfo<Busy>`, see [`while_answering`]).
#[derive(Clone, Debug)]
pub struct Busy(Arc<Shared>);

impl Connected<IncomingStream<'_, Connections>> for Busy {
    fn connect_info(stream: IncomingStream<'_, Connections>) -> Self {
        Busy(stream.io().shared.clone())
    }
}

/// Middleware: the connection is busy from a request's complete head to its answer, so no
/// timeout or eviction cuts the answer short (an upload may wait 30 s for its verdict).
pub async fn while_answering(request: Request, next: Next) -> Response {
    let busy = request.extensions().get::<ConnectInfo<Busy>>().map(|c| Answering::new(&c.0.0));
    let response = next.run(request).await;
    drop(busy);
    response
}

struct Answering(Arc<Shared>);

impl Answering {
    fn new(shared: &Arc<Shared>) -> Self {
        let mut state = shared.state();
        state.in_flight += 1;
        state.head = false;
        Answering(shared.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.since = Instant::now();
            // The task may be parked with no timer armed (none runs while answering).
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;
    use std::time::Instant as StdInstant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn serve(limits: Limits) -> (std::net::SocketAddr, Arc<ConnectionCounters>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ConnectionCounters::default());
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            "slow"
        };
        let app = axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/slow", get(slow))
            .layer(axum::middleware::from_fn(while_answering))
            .into_make_service_with_connect_info::<Busy>();
        let server = axum::serve(Connections::new(listener, limits, counters.clone()), app);
        tokio::spawn(server.into_future());
        (addr, counters)
    }

    /// Sends a GET and reads its answer's body (`ok` or `slow`); the connection stays open.
    async fn request(stream: &mut TcpStream, path: &str) -> String {
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await.unwrap();
        answer(stream).await
    }

    async fn answer(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !(answer.ends_with(b"ok") || answer.ends_with(b"slow")) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&answer).rsplit("\r\n").next().unwrap_or_default().to_string()
    }

    /// Waits for the server to close the connection: what it sent meanwhile.
    async fn closed(stream: &mut TcpStream) -> String {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the server never closed the connection");
        String::from_utf8_lossy(&rest).into_owned()
    }

    #[tokio::test]
    async fn silent_slow_and_idle_connections_are_closed_but_answers_are_not_cut() {
        let limits = Limits {
            max_connections: 16,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
        };
        let (addr, counters) = serve(limits).await;

        let start = StdInstant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slowloris = TcpStream::connect(addr).await.unwrap();
        let trickle = async {
            slowloris.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            // A header line every 100 ms does not extend the time allowed for the head.
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slowloris.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break;
                }
            }
        };
        let (silent_rest, ()) = tokio::join!(closed(&mut silent), trickle);
        assert_eq!(silent_rest, "");
        assert!(start.elapsed() >= Duration::from_millis(290), "{:?}", start.elapsed());
        assert_eq!(closed(&mut slowloris).await, "");
        assert!(start.elapsed() < Duration::from_millis(2500), "{:?}", start.elapsed());

        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert_eq!(request(&mut idle, "/").await, "ok");
        let answered = StdInstant::now();
        assert_eq!(closed(&mut idle).await, "");
        assert!(answered.elapsed() >= Duration::from_millis(550), "{:?}", answered.elapsed());

        // Longer than both timeouts, and answered: no timeout runs while answering.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        assert_eq!(request(&mut busy, "/slow").await, "slow");
        assert_eq!((counters.header_timeouts.load(Relaxed), counters.idle_timeouts.load(Relaxed)), (2, 1));
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_closes_the_one_waiting_longest_never_a_busy_one() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        };
        let (addr, counters) = serve(limits).await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            assert_eq!(request(&mut c, "/").await, "ok");
            idle.push(c);
        }
        let mut newcomer = TcpStream::connect(addr).await.unwrap();
        assert_eq!(request(&mut newcomer, "/").await, "ok", "answered at the cap");
        assert_eq!(closed(&mut idle[0]).await, "", "the oldest idle one made room");
        assert_eq!(request(&mut idle[1], "/").await, "ok", "the others stay");

        // A flood of silent connections: each takes the place of the longest waiting.
        let mut flood = Vec::new();
        for _ in 0..40 {
            flood.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut probe = TcpStream::connect(addr).await.unwrap();
        assert_eq!(request(&mut probe, "/").await, "ok", "answered during the flood");
        assert_eq!(answer(&mut busy).await, "slow", "the busy one is answered");
        assert!(counters.open.load(Relaxed) <= 4);
        assert!(counters.evicted.load(Relaxed) >= 40, "{}", counters.evicted.load(Relaxed));
    }
}
