//! The TCP API's door: any local user can connect to it, so connections are bounded per user
//! and in all (a user who opens a thousand idle connections must not take the daemon's fds, which
//! its probes and the games' reports need), with capacity kept for root, and a connection that
//! does nothing is closed. A refused connection is closed at once; the warnings that say so are
//! rate-limited, so a flood of refusals cannot flood the journal.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

/// Limits of the TCP API's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one non-root user may hold at once.
    pub per_user: usize,
    /// Connections all non-root users may hold together.
    pub total: usize,
    /// Connections root may hold beyond `total` (root's tools still get in during a flood).
    pub root_reserve: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle: Duration,
    /// A request's head (request line and headers) must arrive within this long of its first
    /// byte: one byte now and then keeps a connection from being idle, not from being slow.
    pub header_timeout: Duration,
    /// Requests a second one non-root user may make, on all its connections together...
    pub requests_per_second: f64,
    /// ...and at once after a quiet while.
    pub request_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_user: 32,
            total: 128,
            root_reserve: 32,
            // Longer than the slowest WebSocket stream's interval (60 s), which writes at least
            // that often.
            idle: Duration::from_secs(90),
            header_timeout: Duration::from_secs(10),
            // A dashboard polls a few endpoints a second and Prometheus every few seconds;
            // a user asking hundreds a second only takes the workers from everyone else.
            requests_per_second: 20.0,
            request_burst: 60.0,
        }
    }
}

/// Who holds how many connections.
#[derive(Default)]
struct Holders {
    by_uid: HashMap<u32, usize>,
    non_root: usize,
    root: usize,
}

/// A uid the socket tables do not show (the client already left): counted as one user.
const UNKNOWN_UID: u32 = u32::MAX;

/// The TCP listener with its limits (an `axum::serve` listener).
pub struct GuardedListener {
    inner: TcpListener,
    limits: Limits,
    holders: Arc<Mutex<Holders>>,
    warned: RateLimited,
}

impl GuardedListener {
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn new(inner: TcpListener, limits: Limits) -> GuardedListener {
        GuardedListener {
            inner,
            limits,
            holders: Arc::default(),
            warned: RateLimited::new(Duration::from_secs(10)),
        }
    }

    /// Takes a slot for `uid`, or says why not.
    fn admit(&self, uid: u32) -> Result<Slot, String> {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        if uid == 0 {
            if holders.root >= self.limits.per_user + self.limits.root_reserve {
                return Err("root holds the most connections it may".into());
            }
            holders.root += 1;
        } else {
            let held = holders.by_uid.get(&uid).copied().unwrap_or(0);
            if held >= self.limits.per_user {
                return Err(format!("uid {uid} holds {held} connections already"));
            }
            if holders.non_root >= self.limits.total {
                return Err(format!(
                    "users hold {} connections already (uid {uid} asked)",
                    holders.non_root
                ));
            }
            *holders.by_uid.entry(uid).or_default() += 1;
            holders.non_root += 1;
        }
        Ok(Slot {
            uid,
            holders: Arc::clone(&self.holders),
        })
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of fds (or another transient failure): say so, and wait a little
                    // rather than spinning on a listener that cannot accept.
                    if self.warned.ready() {
                        log::warn!("API: cannot accept a connection: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let local = stream.local_addr().ok();
            // The socket tables are read off the async workers: they can be long.
            let uid = match local {
                Some(local) => tokio::task::spawn_blocking(move || peer_uid(local, peer))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(UNKNOWN_UID),
                None => UNKNOWN_UID,
            };
            match self.admit(uid) {
                Ok(slot) => return (GuardedStream::new(stream, slot, self.limits.idle), peer),
                Err(why) => {
                    if self.warned.ready() {
                        log::warn!(
                            "API: refused a connection from {peer}: {why} (at most {} per user); \
                             further refusals are logged at most every 10 s",
                            self.limits.per_user
                        );
                    }
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection's place in the limits, given back when the connection is dropped.
pub struct Slot {
    uid: u32,
    holders: Arc<Mutex<Holders>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        if self.uid == 0 {
            holders.root = holders.root.saturating_sub(1);
            return;
        }
        holders.non_root = holders.non_root.saturating_sub(1);
        if let Some(held) = holders.by_uid.get_mut(&self.uid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                holders.by_uid.remove(&self.uid);
            }
        }
    }
}

/// A connection that ends (reads and writes fail with `TimedOut`) once idle for too long.
pub struct GuardedStream {
    inner: TcpStream,
    _slot: Slot,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl GuardedStream {
    /// The user the connection's client runs as (`u32::MAX` when the socket tables did not say).
    pub fn uid(&self) -> u32 {
        self._slot.uid
    }

    fn new(inner: TcpStream, slot: Slot, idle: Duration) -> GuardedStream {
        GuardedStream {
            inner,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Passes on a read's or write's poll: done I/O restarts the idle deadline, and pending I/O
    /// past it is an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(result)
            }
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(timed_out()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.watch(cx, poll)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // A client that stops reading cannot hold the connection either.
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, data);
        this.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Each non-root user's requests, metered by a token bucket per uid (root's are not: its tools
/// must get through a flood).
pub struct RequestRates {
    limits: Limits,
    buckets: Mutex<RateBuckets>,
}

#[derive(Default)]
struct RateBuckets {
    by_uid: HashMap<u32, (f64, Instant)>,
    warned: Option<Instant>,
}

/// Buckets kept before full ones are forgotten (a full bucket says nothing a new one would not).
const RATE_BUCKETS_KEPT: usize = 256;

impl RequestRates {
    pub fn new(limits: Limits) -> RequestRates {
        RequestRates {
            limits,
            buckets: Mutex::default(),
        }
    }

    /// Takes one request from `uid`'s bucket at `now`, or says why not (the bucket is empty).
    pub fn admit(&self, uid: u32, now: Instant) -> Result<(), String> {
        if uid == 0 {
            return Ok(());
        }
        let (rate, burst) = (self.limits.requests_per_second, self.limits.request_burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.by_uid.len() >= RATE_BUCKETS_KEPT {
            buckets.by_uid.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.by_uid.entry(uid).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        // `now` was read before the lock: another request may have stamped a later time.
        *at = (*at).max(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let why = format!(
            "uid {uid} asks more than {rate} requests a second (a burst of {burst} at most)"
        );
        let quiet = buckets
            .warned
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(10));
        if quiet {
            buckets.warned = Some(now);
            log::warn!(
                "API: refused a request: {why}; further refusals are logged at most every 10 s"
            );
        }
        Err(why)
    }
}

/// Says yes at most once per period (for warnings that an attacker could otherwise repeat at
/// will).
pub(super) struct RateLimited {
    period: Duration,
    last: Option<Instant>,
}

impl RateLimited {
    pub(super) fn new(period: Duration) -> RateLimited {
        RateLimited { period, last: None }
    }

    pub(super) fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.period)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The most read of one socket table (/proc/net/tcp, /proc/net/tcp6): ~150 bytes a socket.
const SOCKET_TABLE_MAX_BYTES: u64 = 16 << 20;

/// The uid that owns the client end of a loopback connection whose server end is `local` and
/// client end `peer`: in the kernel's socket tables, the socket whose local address is `peer`
/// and remote address `local`. None for a client on another host (or one already gone).
pub fn peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d; its own socket is an
    // IPv4 one, in the IPv4 table.
    let (local, peer) = (unmapped(local), unmapped(peer));
    let table = match peer.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let bytes = crate::identity::read_bounded(table, SOCKET_TABLE_MAX_BYTES)?;
    uid_in_table(&String::from_utf8_lossy(&bytes), peer, local)
}

/// `addr` with an IPv4-mapped IPv6 address written as the IPv4 address it is.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The uid column of the line of `table` whose local address is `local` and remote `remote`.
fn uid_in_table(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (want_local, want_remote) = (table_address(local), table_address(remote));
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let _slot = fields.next()?;
        let l = fields.next()?;
        let r = fields.next()?;
        if !l.eq_ignore_ascii_case(&want_local) || !r.eq_ignore_ascii_case(&want_remote) {
            return None;
        }
        // st, tx_queue:rx_queue, tr:tm->when, retrnsmt, then uid.
        fields.nth(4)?.parse().ok()
    })
}

/// An address as /proc/net/tcp{,6} writes it: the address as the kernel holds it (network
/// order) printed 32-bit word by word in host order, then the port.
fn table_address(addr: SocketAddr) -> String {
    let mut text = String::new();
    let octets: Vec<u8> = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    for word in octets.chunks(4) {
        let value = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
        text.push_str(&format!("{value:08X}"));
    }
    text.push_str(&format!(":{:04X}", addr.port()));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_tables_name_a_local_clients_user() {
        // Two real sockets of this process: the client's uid is ours.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(server).expect("connect");
        let (_accepted, peer) = listener.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        assert_eq!(peer_uid(server, peer), Some(me));
        let gone: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(peer_uid(server, gone), None);
        // The same connection as a dual-stack listener sees it.
        let mapped = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        assert_eq!(peer_uid(mapped(server), mapped(peer)), Some(me));
    }

    #[test]
    fn addresses_are_written_as_the_kernel_writes_them() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        if cfg!(target_endian = "little") {
            assert_eq!(table_address(v4), "0100007F:1F90");
            assert_eq!(table_address(v6), "00000000000000000000000001000000:0050");
        }
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 20 4 30 10 -1\n";
        let remote: SocketAddr = "127.0.0.1:54321".parse().expect("addr");
        assert_eq!(uid_in_table(table, v4, remote), Some(1000));
        assert_eq!(uid_in_table(table, remote, v4), None);
    }

    #[test]
    fn each_users_requests_are_metered_and_roots_are_not() {
        let limits = Limits {
            requests_per_second: 10.0,
            request_burst: 3.0,
            ..Limits::default()
        };
        let rates = RequestRates::new(limits);
        let t0 = Instant::now();
        for _ in 0..3 {
            rates.admit(1000, t0).expect("within the burst");
        }
        assert!(rates.admit(1000, t0).is_err(), "past the burst");
        rates
            .admit(1001, t0)
            .expect("another user has a bucket of its own");
        for _ in 0..100 {
            rates.admit(0, t0).expect("root is not metered");
        }
        // A tenth of a second gives one request back, and no more than the burst ever.
        let later = t0 + Duration::from_millis(110);
        rates.admit(1000, later).expect("refilled");
        assert!(rates.admit(1000, later).is_err());
        let much_later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            rates.admit(1000, much_later).expect("a full bucket again");
        }
        assert!(
            rates.admit(1000, much_later).is_err(),
            "never more than the burst"
        );
    }

    #[test]
    fn users_are_bounded_alone_and_together_and_root_keeps_a_reserve() {
        let limits = Limits {
            per_user: 2,
            total: 3,
            root_reserve: 1,
            idle: Duration::from_secs(1),
            ..Limits::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener =
            GuardedListener::new(TcpListener::from_std(std_listener).expect("tokio"), limits);
        let a1 = listener.admit(1000).expect("first");
        let _a2 = listener.admit(1000).expect("second");
        assert!(listener.admit(1000).is_err(), "a third for one user");
        let _b1 = listener.admit(1001).expect("another user");
        assert!(listener.admit(1002).is_err(), "all users together");
        let r: Vec<Slot> = (0..3).map(|_| listener.admit(0).expect("root")).collect();
        assert!(listener.admit(0).is_err(), "root too is bounded");
        drop(a1);
        let _c1 = listener
            .admit(1002)
            .expect("a slot given back is free again");
        drop(r);
    }
}
