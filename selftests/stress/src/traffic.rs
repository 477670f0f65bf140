// SPDX-License-Identifier: GPL-2.0
//! Both ends of the traffic: clients that connect without pause (plain,
//! with data before the server accepts, Fast Open), and acceptors that
//! serve whatever the group's listeners hand out. Every client ends with
//! one outcome within its deadline; the run asserts that none hung.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Result;
use migrate_tests::harness::{poll_fd, scaled, tcp_info, Deadline};
use socket2::Socket;

use crate::listeners::{tcp_socket, Pool};
use crate::stats::{Stats, Stop};

const REQUEST: &[u8] = b"ping\n";
const REPLY: &[u8] = b"pong\n";

/// How long a client may take from connect() to the reply, on the plain
/// test kernel (scaled on slower ones). A held final ACK, a SYN+ACK timer
/// and a refused migration followed by the client's retransmission all fit.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long an accepted connection waits for its request, then for the
/// client to go.
const SERVE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// connect, wait a little, then send: the child may be queued, or
    /// migrate, before any data comes
    Plain,
    /// send at once: the data waits in the child before it is accepted
    DataFirst,
    /// the request travels in the SYN
    FastOpen,
}

/// How a client ended. `served`, `reset` and `refused` are what a server
/// restart may do to a connection; the others are failures of the run.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Served,
    Reset,
    Refused,
    Eof,
    TimedOut,
    Error,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Reset => "reset",
            Outcome::Refused => "refused",
            Outcome::Eof => "eof",
            Outcome::TimedOut => "timed_out",
            Outcome::Error => "error",
        }
    }

    pub const FAILURES: [Outcome; 3] = [Outcome::Eof, Outcome::TimedOut, Outcome::Error];
}

fn classify(e: &io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => Outcome::Reset,
        Some(libc::ECONNREFUSED) => Outcome::Refused,
        Some(libc::ETIMEDOUT) => Outcome::TimedOut,
        _ => Outcome::Error,
    }
}

/// What TCP_INFO says of a socket that failed, and its ports: enough to
/// tell a lost segment from a lost connection, and to pair both ends.
fn describe(sock: &Socket) -> String {
    let port = |a: std::io::Result<socket2::SockAddr>| {
        a.ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port())
    };
    let ports = format!("{}->{}", port(sock.local_addr()), port(sock.peer_addr()));
    match tcp_info(sock.as_raw_fd()) {
        Ok(i) => format!(
            "{ports} state={} unacked={} retrans={} total_retrans={} backoff={} rto_us={} \
             last_data_sent_ms={} last_data_recv_ms={} last_ack_recv_ms={}",
            i.tcpi_state,
            i.tcpi_unacked,
            i.tcpi_retransmits,
            i.tcpi_total_retrans,
            i.tcpi_backoff,
            i.tcpi_rto,
            i.tcpi_last_data_sent,
            i.tcpi_last_data_recv,
            i.tcpi_last_ack_recv
        ),
        Err(e) => format!("{ports} ({e:#})"),
    }
}

/// One connection from start to end.
fn one(pool: &Pool, kind: Kind, rng: &mut fastrand::Rng) -> (Outcome, Option<String>) {
    let deadline = Deadline::after(scaled(CLIENT_DEADLINE));
    let sock = match tcp_socket(pool.family) {
        Ok(s) => s,
        Err(e) => return (Outcome::Error, Some(format!("socket: {e:#}"))),
    };
    // An RST at close: no TIME_WAIT or orphan outlives the run.
    let _ = sock.set_linger(Some(Duration::ZERO));
    let to = pool.addr().into();
    let started = match kind {
        Kind::FastOpen => sock
            .send_to_with_flags(REQUEST, &to, libc::MSG_FASTOPEN)
            .map(|_| ()),
        _ => sock.connect(&to),
    };
    match started {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return (classify(&e), Some(format!("connect: {e}"))),
    }
    match poll_fd(sock.as_raw_fd(), libc::POLLOUT, deadline) {
        Ok(true) => {}
        Ok(false) => return (Outcome::TimedOut, Some("no SYN+ACK".into())),
        Err(e) => return (Outcome::Error, Some(format!("{e:#}"))),
    }
    match sock.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return (classify(&e), Some(format!("connect: {e}"))),
    }
    if let Kind::Plain = kind {
        thread::sleep(Duration::from_millis(rng.u64(..20)));
    }
    if !matches!(kind, Kind::FastOpen) {
        match (&sock).write(REQUEST) {
            Ok(n) if n == REQUEST.len() => {}
            Ok(n) => return (Outcome::Error, Some(format!("sent {n} bytes"))),
            Err(e) => return (classify(&e), Some(format!("send: {e}"))),
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < REPLY.len() {
        match poll_fd(sock.as_raw_fd(), libc::POLLIN, deadline) {
            Ok(true) => {}
            Ok(false) => {
                return (
                    Outcome::TimedOut,
                    Some(format!("no reply: {}", describe(&sock))),
                )
            }
            Err(e) => return (Outcome::Error, Some(format!("{e:#}"))),
        }
        match (&sock).read(&mut buf) {
            Ok(0) => {
                return (
                    Outcome::Eof,
                    Some(format!("closed without a reply: {}", describe(&sock))),
                )
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return (classify(&e), Some(format!("recv: {e}"))),
        }
    }
    if got == REPLY {
        (Outcome::Served, None)
    } else {
        (Outcome::Error, Some(format!("reply {got:?}")))
    }
}

/// A client thread: connections one after another until the run stops or
/// `budget` connections were made by all clients together.
pub fn client(
    pools: &[Arc<Pool>],
    seed: u64,
    stop: &Stop,
    stats: &Stats,
    budget: u64,
) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.is_set() && stats.sum("client/") < budget {
        let pool = &pools[rng.usize(..pools.len())];
        let kind = match rng.u32(..3) {
            0 => Kind::Plain,
            1 => Kind::DataFirst,
            _ => Kind::FastOpen,
        };
        let (outcome, why) = one(pool, kind, &mut rng);
        stats.bump(&format!("client/{}", outcome.name()));
        stats.bump(&format!("kind/{kind:?}/{}", outcome.name()));
        if let Some(why) =
            why.filter(|_| Outcome::FAILURES.iter().any(|f| f.name() == outcome.name()))
        {
            stats.error(
                &format!("failed/{}", outcome.name()),
                &anyhow::anyhow!("{kind:?} client to {}: {why}", pool.addr()),
            );
        }
    }
    Ok(())
}

/// Serves one accepted connection: read the request, answer, wait for the
/// client to close.
fn serve(sock: Socket, stats: &Stats) {
    let _ = sock.set_nonblocking(true);
    let deadline = Deadline::after(scaled(SERVE_WAIT));
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < REQUEST.len() {
        if !poll_fd(sock.as_raw_fd(), libc::POLLIN, deadline).unwrap_or(false) {
            stats.error(
                "server/no_request",
                &anyhow::anyhow!("{} bytes, then nothing: {}", got.len(), describe(&sock)),
            );
            return;
        }
        match (&sock).read(&mut buf) {
            Ok(0) => {
                stats.bump("server/eof_before_request");
                return;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                stats.bump("server/reset_before_request");
                return;
            }
        }
    }
    if (&sock).write(REPLY).ok() != Some(REPLY.len()) {
        stats.bump("server/reply_failed");
        return;
    }
    stats.bump("server/replied");
    // The client reads the reply and closes with an RST.
    let _ = poll_fd(sock.as_raw_fd(), libc::POLLIN, deadline);
}

/// An acceptor thread: polls every listening socket of every group and
/// serves what it accepts, until `done` (every client has ended).
pub fn acceptor(pools: &[Arc<Pool>], done: &Stop, stats: &Stats) -> Result<()> {
    loop {
        let ls: Vec<Arc<Socket>> = pools.iter().flat_map(|p| p.listening()).collect();
        if ls.is_empty() {
            if done.is_set() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        let mut fds: Vec<libc::pollfd> = ls
            .iter()
            .map(|l| libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of fds.len() pollfds, and every
        // fd stays open while `ls` holds its socket.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            if done.is_set() {
                return Ok(());
            }
            continue;
        }
        for (l, p) in ls.iter().zip(&fds) {
            if p.revents & libc::POLLIN == 0 {
                continue;
            }
            match l.accept() {
                Ok((s, _)) => {
                    stats.bump("server/accepted");
                    serve(s, stats);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // shut down meanwhile
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => stats.error("server/accept_failed", &e.into()),
            }
        }
    }
}
