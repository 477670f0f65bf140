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

#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub attempted: u64,
    pub served: u64,
    pub reset: u64,
    pub refused: u64,
    pub timeout: u64,
    pub other: u64,
    /// Every lost attempt by class, stage and error, e.g.
    /// "reset read: ECONNRESET" → count.
    pub causes: BTreeMap<String, u64>,
    pub max_latency: Duration,
    /// Client threads that panicked (their counts are lost).
    pub panics: u64,
}

impl Tally {
    fn record(&mut self, fate: Fate, took: Duration) {
        self.attempted += 1;
        self.max_latency = self.max_latency.max(took);
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

/// One attempt against `addr`.
pub fn attempt(addr: &SockAddr, domain: Domain, timeout: Duration) -> Fate {
    let sock = match Socket::new(domain, Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return Fate::Other(format!("socket: {e}")),
    };
    if let Err(e) = sock.connect_timeout(addr, timeout) {
        return classify(&e, "connect");
    }
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
    pub fn start(clients: u32, addr: SocketAddr, timeout: Duration, end: Instant) -> Result<Load> {
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
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        let t0 = Instant::now();
                        let fate = attempt(&sa, domain, timeout);
                        tally.record(fate, t0.elapsed());
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
