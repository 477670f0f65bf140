// SPDX-License-Identifier: GPL-2.0
//! The server side of every scenario: addresses, TCP_INFO and socket
//! options, and the reuseport group whose listeners a test opens and stops.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::thread;

use anyhow::{anyhow, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{event_timeout, wait_until, Deadline, POLL_STEP};

const LISTEN_BACKLOG: i32 = 64;

// ---------------------------------------------------------------------------
// Addresses and TCP_INFO

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn prefix(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub fn loopback(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Family::V6 => SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        }
    }

    fn domain(self) -> Domain {
        match self {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        }
    }

    pub fn tcp_socket(self) -> Result<Socket> {
        let s = Socket::new(self.domain(), Type::STREAM, Some(Protocol::TCP))
            .context("socket(SOCK_STREAM)")?;
        s.set_nonblocking(true)?;
        Ok(s)
    }
}

pub fn tcp_info(fd: RawFd) -> Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("getsockopt(TCP_INFO)");
    }
    Ok(info)
}

pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, val: i32) -> io::Result<()> {
    // SAFETY: pointer and length describe one c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const i32 as *const libc::c_void,
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn port_of(addr: &SockAddr) -> u16 {
    addr.as_socket().map(|a| a.port()).unwrap_or(0)
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_RECV: u8 = 3;
const TCP_LISTEN: u8 = 10;

pub fn tcp_state(s: &Socket) -> Result<u8> {
    Ok(tcp_info(s.as_raw_fd())?.tcpi_state)
}

// ---------------------------------------------------------------------------
// Listener group

/// How a listener is taken down.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Close,
    Shutdown,
}

/// N TCP sockets bound with SO_REUSEPORT to one loopback port. Index i is
/// "listener i" (L<i>) in failure messages. A socket joins the kernel's
/// reuseport group only when it listen()s, so tests control where new
/// connections can land by choosing when each one listens.
pub struct Group {
    pub family: Family,
    pub port: u16,
    ip: IpAddr,
    socks: Vec<Option<Socket>>,
    backlogs: Vec<i32>,
}

/// One accepted connection: which listener handed it out and the client
/// port it comes from.
pub struct Accepted {
    pub listener: usize,
    pub sock: Socket,
    pub peer_port: u16,
}

impl Group {
    pub fn bind(family: Family, n: usize) -> Result<Group> {
        Self::bind_on(family, None, &vec![None; n])
    }

    /// As [`Group::bind`], on a given port (None: a free one), socket i
    /// bound to device `devices[i]` (SO_BINDTODEVICE) or to none.
    pub fn bind_on(family: Family, port: Option<u16>, devices: &[Option<&str>]) -> Result<Group> {
        Self::bind_at(family, family.loopback(0).ip(), port, devices)
    }

    /// As [`Group::bind_on`], on address `ip` of this namespace rather than
    /// loopback, for clients of another namespace.
    pub fn bind_at(
        family: Family,
        ip: IpAddr,
        port: Option<u16>,
        devices: &[Option<&str>],
    ) -> Result<Group> {
        // Every listener binds to the port by number, as servers do: a
        // socket bound to port 0 gives its port up when it closes, one
        // bound by number keeps it until it is freed, and only then can a
        // handshake still complete on it after close().
        let port = match port {
            Some(p) => p,
            None => {
                let probe = family.tcp_socket()?;
                probe
                    .bind(&SocketAddr::new(ip, 0).into())
                    .context("bind a probe socket to find a free port")?;
                port_of(&probe.local_addr()?)
            }
        };
        let n = devices.len();
        let mut socks = Vec::with_capacity(n);
        for (i, dev) in devices.iter().enumerate() {
            let s = family.tcp_socket()?;
            s.set_reuse_port(true)?;
            if let Some(d) = dev {
                s.bind_device(Some(d.as_bytes()))
                    .with_context(|| format!("SO_BINDTODEVICE {d} on L{i}"))?;
            }
            s.bind(&SocketAddr::new(ip, port).into())
                .with_context(|| format!("bind L{i} to {ip} port {port}"))?;
            socks.push(Some(s));
        }
        Ok(Group {
            family,
            port,
            ip,
            socks,
            backlogs: vec![LISTEN_BACKLOG; n],
        })
    }

    /// A group of one: `sock`, made and bound by the caller (a socket with
    /// options of its own: another owner, no SO_REUSEPORT, ...) to `ip`
    /// and `port`.
    pub fn of(family: Family, ip: IpAddr, port: u16, sock: Socket) -> Group {
        Group {
            family,
            port,
            ip,
            socks: vec![Some(sock)],
            backlogs: vec![LISTEN_BACKLOG],
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// A group of no sockets (never made by [`Group::bind`] with n > 0).
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn sock(&self, i: usize) -> Result<&Socket> {
        self.socks
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("L{i} is closed"))
    }

    pub fn fd(&self, i: usize) -> Result<RawFd> {
        Ok(self.sock(i)?.as_raw_fd())
    }

    pub fn listen(&self, i: usize) -> Result<()> {
        let backlog = self.backlogs[i];
        self.sock(i)?
            .listen(backlog)
            .with_context(|| format!("listen L{i} (backlog {backlog})"))
    }

    /// The backlog L<i> will listen() with (before it does).
    pub fn set_backlog(&mut self, i: usize, backlog: i32) {
        self.backlogs[i] = backlog;
    }

    /// Enables TCP Fast Open on every socket of the group (before listen).
    pub fn enable_fastopen(&self, qlen: i32) -> Result<()> {
        for i in 0..self.len() {
            setsockopt_int(self.fd(i)?, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, qlen)
                .with_context(|| format!("TCP_FASTOPEN on L{i}"))?;
        }
        Ok(())
    }

    /// Hands L<i> over, to be closed elsewhere (another thread); the group
    /// counts it as closed.
    pub fn take(&mut self, i: usize) -> Result<Socket> {
        self.socks[i]
            .take()
            .ok_or_else(|| anyhow!("L{i} already closed"))
    }

    /// close() drops the descriptor; shutdown(SHUT_RDWR) keeps it open in
    /// TCP_CLOSE state so the test can also check it hands out nothing.
    pub fn stop(&mut self, i: usize, how: Stop) -> Result<()> {
        match how {
            Stop::Close => drop(self.take(i)?),
            Stop::Shutdown => self
                .sock(i)?
                .shutdown(std::net::Shutdown::Both)
                .with_context(|| format!("shutdown(SHUT_RDWR) L{i}"))?,
        }
        Ok(())
    }

    /// Children waiting in L<i>'s accept queue (TCP_INFO reports the accept
    /// backlog of a listener in tcpi_unacked); 0 once it stopped listening.
    pub fn queued(&self, i: usize) -> Result<u32> {
        let info = tcp_info(self.fd(i)?)?;
        Ok(if info.tcpi_state == TCP_LISTEN {
            info.tcpi_unacked
        } else {
            0
        })
    }

    /// Waits until L<i>'s accept queue holds `want` children; returns what
    /// it holds at the end.
    pub fn wait_queued(&self, i: usize, want: u32) -> Result<u32> {
        wait_until(event_timeout(), || Ok(self.queued(i)? >= want))?;
        self.queued(i)
    }

    /// Accepts whatever is queued on L<i> right now (non-blocking).
    /// A listener taken down by shutdown() answers EINVAL: nothing to hand out.
    pub fn accept_now(&self, i: usize, out: &mut Vec<Accepted>) -> Result<()> {
        let Some(l) = self.socks[i].as_ref() else {
            return Ok(());
        };
        loop {
            match l.accept() {
                Ok((sock, peer)) => {
                    sock.set_nonblocking(true)?;
                    out.push(Accepted {
                        listener: i,
                        sock,
                        peer_port: port_of(&peer),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("accept on L{i}")),
            }
        }
    }

    /// Accepts from every listener until `want` connections were handed out
    /// or the event timeout passes, then one more sweep so surplus
    /// connections are seen too.
    pub fn accept_all(&self, want: usize) -> Result<Vec<Accepted>> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.accept_from(&all, want)
    }

    /// As `accept_all`, but only from the listeners in `which` (a stalled
    /// listener is never served).
    pub fn accept_from(&self, which: &[usize], want: usize) -> Result<Vec<Accepted>> {
        let mut got = Vec::new();
        let deadline = Deadline::after(event_timeout());
        loop {
            for &i in which {
                self.accept_now(i, &mut got)?;
            }
            if got.len() >= want || deadline.expired() {
                break;
            }
            thread::sleep(POLL_STEP.min(deadline.remaining()));
        }
        for &i in which {
            self.accept_now(i, &mut got)?;
        }
        Ok(got)
    }
}

pub fn count_on(accepted: &[Accepted], listener: usize) -> usize {
    accepted.iter().filter(|a| a.listener == listener).count()
}
