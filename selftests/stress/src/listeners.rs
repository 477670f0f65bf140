// SPDX-License-Identifier: GPL-2.0
//! A reuseport group whose listeners come and go: each slot is closed,
//! listening, or shut down (which keeps the socket, so it can listen again:
//! `reuseport_resurrect()`). Every listener binds the group's port by
//! number, as servers do, and sets TCP_FASTOPEN. One listener in four is
//! an MPTCP socket where the kernel has MPTCP: its TCP subflow listener
//! binds the same port with SO_REUSEPORT and the same owner, so it joins
//! the TCP group; it must never park (MPTCP sockets do not), and
//! connections migrate to it and from it like any other.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use migrate_tests::harness::{setsockopt_int, Family};
use socket2::{Domain, Protocol, Socket, Type};

use crate::stats::Stats;

const BACKLOG: i32 = 16;
const FASTOPEN_QLEN: i32 = 16;
const IPPROTO_MPTCP: i32 = 262;
/// One listener opened in this many is an MPTCP one.
const MPTCP_EVERY: usize = 4;

enum Slot {
    Closed,
    Listening(Arc<Socket>),
    Shut(Arc<Socket>),
}

pub struct Pool {
    pub family: Family,
    pub port: u16,
    slots: Mutex<Vec<Slot>>,
    /// Listeners opened so far, which picks the MPTCP ones.
    opens: AtomicUsize,
    /// socket(IPPROTO_MPTCP) failed once: the kernel has no MPTCP.
    no_mptcp: AtomicBool,
}

pub fn tcp_socket(family: Family) -> Result<Socket> {
    let domain = match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).context("socket")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl Pool {
    /// `n` listeners on `port` (0: a free one), all listening; one in
    /// four opened later is MPTCP if `mptcp`.
    pub fn new(family: Family, port: u16, n: usize, mptcp: bool) -> Result<Pool> {
        let mut pool = Pool {
            family,
            port,
            slots: Mutex::new((0..n).map(|_| Slot::Closed).collect()),
            opens: AtomicUsize::new(0),
            no_mptcp: AtomicBool::new(!mptcp),
        };
        let (first, _) = pool.open()?;
        pool.port = first
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .unwrap_or(0);
        {
            let mut slots = pool.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots[0] = Slot::Listening(Arc::new(first));
            for slot in slots.iter_mut().skip(1) {
                *slot = Slot::Listening(Arc::new(pool.open()?.0));
            }
        }
        Ok(pool)
    }

    /// A pool of no listener that names `port`, for a request about a
    /// listener bound there by other code.
    pub fn new_bound(family: Family, port: u16) -> Pool {
        Pool {
            family,
            port,
            slots: Mutex::new(Vec::new()),
            opens: AtomicUsize::new(0),
            no_mptcp: AtomicBool::new(true),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.family.loopback(self.port)
    }

    /// An MPTCP socket, or None where the kernel has no MPTCP (for this
    /// family).
    fn mptcp_socket(&self) -> Result<Option<Socket>> {
        if self.no_mptcp.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let domain = match self.family {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        };
        match Socket::new(domain, Type::STREAM, Some(Protocol::from(IPPROTO_MPTCP))) {
            Ok(s) => {
                s.set_nonblocking(true)?;
                Ok(Some(s))
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPROTONOSUPPORT) | Some(libc::EINVAL) | Some(libc::EAFNOSUPPORT)
                ) =>
            {
                self.no_mptcp.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e).context("socket(IPPROTO_MPTCP)"),
        }
    }

    /// A new listener on the group's port, and whether it is MPTCP.
    fn open(&self) -> Result<(Socket, bool)> {
        // The first listener, which finds the port, is always TCP.
        let k = self.opens.fetch_add(1, Ordering::Relaxed);
        let mptcp = match k % MPTCP_EVERY == MPTCP_EVERY - 1 {
            true => self.mptcp_socket()?,
            false => None,
        };
        let is_mptcp = mptcp.is_some();
        let s = match mptcp {
            Some(s) => s,
            None => tcp_socket(self.family)?,
        };
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        match setsockopt_int(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            FASTOPEN_QLEN,
        ) {
            Ok(()) => {}
            // MPTCP takes TCP_FASTOPEN only on newer kernels: its
            // listener works without.
            Err(_) if is_mptcp => {}
            Err(e) => return Err(e).context("TCP_FASTOPEN"),
        }
        s.bind(&self.addr().into())
            .with_context(|| format!("bind {}", self.addr()))?;
        s.listen(BACKLOG).context("listen")?;
        Ok((s, is_mptcp))
    }

    /// The sockets that are listening now.
    pub fn listening(&self) -> Vec<Arc<Socket>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter_map(|s| match s {
                Slot::Listening(l) => Some(Arc::clone(l)),
                _ => None,
            })
            .collect()
    }

    /// The TCP sockets that are listening now: a reuseport program, its
    /// socket array and a sockmap take TCP sockets, not MPTCP ones.
    pub fn listening_tcp(&self) -> Vec<Arc<Socket>> {
        self.listening()
            .into_iter()
            .filter(|l| l.protocol().ok().flatten() != Some(Protocol::from(IPPROTO_MPTCP)))
            .collect()
    }

    /// One random change to one random slot. A closed socket is closed for
    /// good when its last holder (an acceptor in the middle of a poll) lets
    /// go of it, which is how servers close too.
    pub fn churn(&self, rng: &mut fastrand::Rng, cpus: usize, stats: &Stats) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = rng.usize(..slots.len());
        let roll = rng.u32(..100);
        let fam = self.family.prefix();
        match &slots[i] {
            Slot::Closed => match self.open() {
                Ok((s, mptcp)) => {
                    slots[i] = Slot::Listening(Arc::new(s));
                    stats.bump(&format!("op/{fam}/listen_new"));
                    if mptcp {
                        stats.bump(&format!("op/{fam}/listen_new_mptcp"));
                    }
                }
                Err(e) => stats.error(&format!("op/{fam}/listen_new_failed"), &e),
            },
            Slot::Listening(l) if roll < 35 => {
                let _ = l;
                slots[i] = Slot::Closed;
                stats.bump(&format!("op/{fam}/close"));
            }
            Slot::Listening(l) if roll < 65 => match l.shutdown(std::net::Shutdown::Both) {
                Ok(()) => {
                    stats.bump(&format!("op/{fam}/shutdown"));
                    slots[i] = Slot::Shut(Arc::clone(l));
                }
                // A SOCK_DESTROY of the chaos thread closed it: a server
                // sees the error and closes the socket. (Listening on it
                // again would make a listener whose sk_shutdown tcp_done()
                // left at SHUTDOWN_MASK, whose children upstream makes
                // shut down: patch 1 clears that, base does not.)
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                    stats.bump(&format!("op/{fam}/found_destroyed"));
                    slots[i] = Slot::Closed;
                }
                Err(e) => {
                    stats.error(&format!("op/{fam}/shutdown_failed"), &e.into());
                    slots[i] = Slot::Shut(Arc::clone(l));
                }
            },
            Slot::Listening(l) => {
                // SO_INCOMING_CPU: a CPU, or -1 to clear the preference.
                let (cpu, what) = if roll < 85 {
                    (rng.usize(..cpus) as i32, "incoming_cpu_set")
                } else {
                    (-1, "incoming_cpu_clear")
                };
                match setsockopt_int(l.as_raw_fd(), libc::SOL_SOCKET, libc::SO_INCOMING_CPU, cpu) {
                    Ok(()) => stats.bump(&format!("op/{fam}/{what}")),
                    Err(e) => stats.error(&format!("op/{fam}/{what}_failed"), &e.into()),
                }
            }
            Slot::Shut(l) if roll < 70 => match l.listen(BACKLOG) {
                Ok(()) => {
                    slots[i] = Slot::Listening(Arc::clone(l));
                    stats.bump(&format!("op/{fam}/listen_again"));
                }
                Err(e) => stats.error(&format!("op/{fam}/listen_again_failed"), &e.into()),
            },
            Slot::Shut(_) => {
                slots[i] = Slot::Closed;
                stats.bump(&format!("op/{fam}/close_shut"));
            }
        }
    }

    /// Closes listener `i` (if it is open).
    pub fn close_slot(&self, i: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get_mut(i) {
            *s = Slot::Closed;
        }
    }

    /// Closes every listener (the end of the run).
    pub fn close_all(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for s in slots.iter_mut() {
            *s = Slot::Closed;
        }
    }
}
