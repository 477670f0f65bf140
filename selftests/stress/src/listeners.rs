// SPDX-License-Identifier: GPL-2.0
//! A reuseport group whose listeners come and go: each slot is closed,
//! listening, or shut down (which keeps the socket, so it can listen again:
//! `reuseport_resurrect()`). Every listener binds the group's port by
//! number, as servers do, and sets TCP_FASTOPEN.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use migrate_tests::harness::{setsockopt_int, Family};
use socket2::{Domain, Protocol, Socket, Type};

use crate::stats::Stats;

const BACKLOG: i32 = 16;
const FASTOPEN_QLEN: i32 = 16;

enum Slot {
    Closed,
    Listening(Arc<Socket>),
    Shut(Arc<Socket>),
}

pub struct Pool {
    pub family: Family,
    pub port: u16,
    slots: Mutex<Vec<Slot>>,
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
    /// `n` listeners on `port` (0: a free one), all listening.
    pub fn new(family: Family, port: u16, n: usize) -> Result<Pool> {
        let mut pool = Pool {
            family,
            port,
            slots: Mutex::new((0..n).map(|_| Slot::Closed).collect()),
        };
        let first = pool.open()?;
        pool.port = first
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .unwrap_or(0);
        {
            let mut slots = pool.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots[0] = Slot::Listening(Arc::new(first));
            for slot in slots.iter_mut().skip(1) {
                *slot = Slot::Listening(Arc::new(pool.open()?));
            }
        }
        Ok(pool)
    }

    pub fn addr(&self) -> SocketAddr {
        self.family.loopback(self.port)
    }

    fn open(&self) -> Result<Socket> {
        let s = tcp_socket(self.family)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        setsockopt_int(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            FASTOPEN_QLEN,
        )
        .context("TCP_FASTOPEN")?;
        s.bind(&self.addr().into())
            .with_context(|| format!("bind {}", self.addr()))?;
        s.listen(BACKLOG).context("listen")?;
        Ok(s)
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
                Ok(s) => {
                    slots[i] = Slot::Listening(Arc::new(s));
                    stats.bump(&format!("op/{fam}/listen_new"));
                }
                Err(e) => stats.error(&format!("op/{fam}/listen_new_failed"), &e),
            },
            Slot::Listening(l) if roll < 35 => {
                let _ = l;
                slots[i] = Slot::Closed;
                stats.bump(&format!("op/{fam}/close"));
            }
            Slot::Listening(l) if roll < 65 => {
                match l.shutdown(std::net::Shutdown::Both) {
                    Ok(()) => stats.bump(&format!("op/{fam}/shutdown")),
                    Err(e) => stats.error(&format!("op/{fam}/shutdown_failed"), &e.into()),
                }
                slots[i] = Slot::Shut(Arc::clone(l));
            }
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
