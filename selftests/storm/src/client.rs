// SPDX-License-Identifier: GPL-2.0
//! The load: C threads, each looping connect → request → response → close.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::worker::{REQUEST, RESPONSE_PREFIX};

/// What became of one attempt. Every attempt gets exactly one. The
/// string says where and how (e.g. "read: ECONNRESET").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The full response was read.
    Served,
    /// ECONNRESET / EPIPE / ECONNABORTED, or EOF before the response.
    Reset(String),
    /// ECONNREFUSED: no listener took the SYN.
    Refused(String),
    /// connect, or request+response, took longer than the timeout.
    Timeout(String),
    /// Anything else (local errors, a garbled response); never expected.
    Other(String),
}

/// Most connect latencies kept per thread (for the percentiles).
const MAX_SAMPLES: usize = 1 << 20;

/// The counts of a load: every attempt in exactly one class.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Attempts started (and ended).
    pub attempted: u64,
    /// See [`Fate::Served`].
    pub served: u64,
    /// See [`Fate::Reset`].
    pub reset: u64,
    /// See [`Fate::Refused`].
    pub refused: u64,
    /// See [`Fate::Timeout`].
    pub timeout: u64,
    /// See [`Fate::Other`].
    pub other: u64,
    /// Every lost attempt by class, stage and error, e.g.
    /// "reset read: ECONNRESET" → count.
    pub causes: BTreeMap<String, u64>,
    /// The longest attempt.
    pub max_latency: Duration,
    /// Client threads that panicked (their counts are lost).
    pub panics: u64,
    /// connect() times of the attempts whose connect succeeded, in µs
    /// (at most `MAX_SAMPLES` per thread; unsorted).
    pub connect_us: Vec<u32>,
}

impl Tally {
    fn record(&mut self, fate: Fate, took: Duration, connect: Option<Duration>) {
        self.attempted += 1;
        self.max_latency = self.max_latency.max(took);
        if let Some(c) = connect {
            if self.connect_us.len() < MAX_SAMPLES {
                self.connect_us
                    .push(u32::try_from(c.as_micros()).unwrap_or(u32::MAX));
            }
        }
        let (class, what) = match fate {
            Fate::Served => {
                self.served += 1;
                return;
            }
            Fate::Reset(w) => (&mut self.reset, format!("reset {w}")),
            Fate::Refused(w) => (&mut self.refused, format!("refused {w}")),
            Fate::Timeout(w) => (&mut self.timeout, format!("timeout {w}")),
            Fate::Other(w) => (&mut self.other, format!("other {w}")),
        };
        *class += 1;
        *self.causes.entry(what).or_default() += 1;
    }

    /// Add the counts of `o` to these.
    pub fn merge(&mut self, o: Tally) {
        self.attempted += o.attempted;
        self.served += o.served;
        self.reset += o.reset;
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.other += o.other;
        for (k, v) in o.causes {
            *self.causes.entry(k).or_default() += v;
        }
        self.max_latency = self.max_latency.max(o.max_latency);
        self.panics += o.panics;
        self.connect_us.extend_from_slice(&o.connect_us);
    }

    /// The `q`-quantile (0.0..=1.0) of the connect times in µs, nearest
    /// rank; None without samples.
    pub fn connect_quantile_us(&self, q: f64) -> Option<u32> {
        if self.connect_us.is_empty() {
            return None;
        }
        let mut v = self.connect_us.clone();
        v.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.saturating_sub(1).min(v.len() - 1)])
    }
}

fn classify(e: &io::Error, during: &str) -> Fate {
    let what = match e.raw_os_error() {
        Some(n) => format!("{during}: {}", nix::errno::Errno::from_raw(n)),
        None => format!("{during}: {e}"),
    };
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Fate::Refused(what),
        Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => Fate::Reset(what),
        Some(libc::ETIMEDOUT | libc::EAGAIN | libc::EINPROGRESS) => Fate::Timeout(what),
        _ if matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) =>
        {
            Fate::Timeout(what)
        }
        _ => Fate::Other(what),
    }
}

/// One attempt against `addr`, and how long its connect() took if it
/// succeeded.
pub fn attempt(addr: &SockAddr, domain: Domain, timeout: Duration) -> (Fate, Option<Duration>) {
    let sock = match Socket::new(domain, Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return (Fate::Other(format!("socket: {e}")), None),
    };
    let t0 = Instant::now();
    if let Err(e) = sock.connect_timeout(addr, timeout) {
        return (classify(&e, "connect"), None);
    }
    (exchange(sock, timeout), Some(t0.elapsed()))
}

/// Request and response on a connected socket.
fn exchange(sock: Socket, timeout: Duration) -> Fate {
    let deadline = Instant::now() + timeout;
    let mut stream: TcpStream = sock.into();
    if let Err(e) = stream.set_write_timeout(Some(timeout)) {
        return Fate::Other(format!("SO_SNDTIMEO: {e}"));
    }
    if let Err(e) = stream.write_all(REQUEST) {
        return classify(&e, "write");
    }
    let mut buf = [0u8; 128];
    let mut len = 0;
    let mut complete = false;
    // Read the response line, then on to EOF so that the server, not the
    // client, is the side that closes first.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if complete {
                Fate::Served
            } else {
                Fate::Timeout(format!("read: no response within {timeout:?}"))
            };
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return Fate::Other(format!("SO_RCVTIMEO: {e}"));
        }
        let room = if len < buf.len() {
            &mut buf[len..]
        } else {
            &mut buf[..]
        };
        match stream.read(room) {
            Ok(0) if complete => return Fate::Served,
            Ok(0) => return Fate::Reset("read: EOF before the response".into()),
            Ok(n) if !complete => {
                len += n;
                if let Some(nl) = buf[..len].iter().position(|&b| b == b'\n') {
                    if !buf[..nl].starts_with(RESPONSE_PREFIX) {
                        return Fate::Other(format!(
                            "garbled response {:?}",
                            String::from_utf8_lossy(&buf[..nl])
                        ));
                    }
                    complete = true;
                } else if len == buf.len() {
                    return Fate::Other("response line too long".into());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if complete => return Fate::Served,
            Err(e) => return classify(&e, "read"),
        }
    }
}

/// The running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Start `clients` threads that run until `end` (or until stopped).
    /// With `rate` > 0 the threads together start `rate` attempts per
    /// second (each thread on its own fixed schedule; a thread that falls
    /// behind skips the slots it missed, so the achieved rate shows it);
    /// with 0 each thread starts its next attempt when the last one ends.
    pub fn start(
        clients: u32,
        addr: SocketAddr,
        timeout: Duration,
        end: Instant,
        rate: u32,
    ) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let domain = Domain::for_address(addr);
        let mut load = Load {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for i in 0..clients {
            let stop = stop.clone();
            let sa = SockAddr::from(addr);
            let t = std::thread::Builder::new()
                .name(format!("client{i}"))
                .spawn(move || {
                    let mut tally = Tally::default();
                    let every = (rate > 0)
                        .then(|| Duration::from_secs_f64(f64::from(clients) / f64::from(rate)));
                    let mut next = Instant::now() + every.unwrap_or_default() * i / clients;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        if let Some(every) = every {
                            let now = Instant::now();
                            if next > now {
                                std::thread::sleep(
                                    (next - now).min(end.saturating_duration_since(now)),
                                );
                                continue;
                            }
                            next += every;
                            if next + every < now {
                                next = now + every;
                            }
                        }
                        let t0 = Instant::now();
                        let (fate, connect) = attempt(&sa, domain, timeout);
                        tally.record(fate, t0.elapsed(), connect);
                    }
                    tally
                });
            match t {
                Ok(h) => load.threads.push(h),
                Err(e) => {
                    load.finish();
                    return Err(e).context("cannot start a client thread");
                }
            }
        }
        Ok(load)
    }

    /// Stop starting attempts, wait for those in flight (each is bounded
    /// by its timeouts) and add everything up.
    pub fn finish(&mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for h in self.threads.drain(..) {
            match h.join() {
                Ok(t) => total.merge(t),
                Err(_) => total.panics += 1,
            }
        }
        total
    }
}
