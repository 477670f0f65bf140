// SPDX-License-Identifier: GPL-2.0
//! Loopback clients, what became of them, and the exchange that proves a
//! connection alive: the client's side of every scenario.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
use socket2::Socket;

use super::sockets::{port_of, TCP_ESTABLISHED};
use super::{
    event_timeout, poll_fd, tcp_info, tcp_state, wait_until, Accepted, Checks, Deadline, Family,
};

/// A loopback client. `hello` is what it sends first; the server side
/// checks it arrives intact on the accepted socket.
pub struct Client {
    pub sock: Socket,
    pub port: u16,
    pub hello: Vec<u8>,
    sent: bool,
}

fn hello_for(id: usize) -> Vec<u8> {
    format!("hello {id:04}\n").into_bytes()
}

const PONG: &[u8] = b"pong\n";

impl Client {
    /// Connects and waits (bounded) for the client side to be established,
    /// i.e. for the SYN+ACK; the final ACK may still be in flight or held.
    pub fn connect(family: Family, to: SocketAddr, id: usize) -> Result<Client> {
        let sock = family.tcp_socket()?;
        match sock.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e).with_context(|| format!("client {id}: connect {to}")),
        }
        Self::finish_connect(sock, id)
    }

    /// Fast Open: the hello travels in the SYN (no cookie needed with
    /// tcp_fastopen bits 0x4 and 0x200), then waits for the SYN+ACK.
    pub fn connect_fastopen(family: Family, to: SocketAddr, id: usize) -> Result<Client> {
        let sock = family.tcp_socket()?;
        let hello = hello_for(id);
        let n = sock
            .send_to_with_flags(&hello, &to.into(), libc::MSG_FASTOPEN)
            .with_context(|| format!("client {id}: sendto(MSG_FASTOPEN) {to}"))?;
        if n != hello.len() {
            bail!("client {id}: SYN carried {n} of {} data bytes", hello.len());
        }
        let mut c = Self::finish_connect(sock, id)?;
        c.sent = true;
        Ok(c)
    }

    fn finish_connect(sock: Socket, id: usize) -> Result<Client> {
        if !poll_fd(
            sock.as_raw_fd(),
            libc::POLLOUT,
            Deadline::after(event_timeout()),
        )? {
            bail!("client {id}: not connected after {:?}", event_timeout());
        }
        if let Some(e) = sock.take_error()? {
            return Err(e).with_context(|| format!("client {id}: connect"));
        }
        let port = port_of(&sock.local_addr()?);
        Ok(Client {
            sock,
            port,
            hello: hello_for(id),
            sent: false,
        })
    }

    /// Sends the hello unless it already went out (Fast Open).
    pub fn send_hello(&mut self) -> Result<()> {
        if self.sent {
            return Ok(());
        }
        let n = (&self.sock).write(&self.hello).context("client send")?;
        if n != self.hello.len() {
            bail!("client sent {n} of {} bytes", self.hello.len());
        }
        self.sent = true;
        Ok(())
    }

    /// Segments sent but not yet acknowledged by the server (TCP_INFO).
    pub fn unacked(&self) -> Result<u32> {
        Ok(tcp_info(self.sock.as_raw_fd())?.tcpi_unacked)
    }

    /// Waits (bounded) for something from the server and classifies it.
    pub fn fate(&self, deadline: Deadline) -> Result<Fate> {
        if !poll_fd(self.sock.as_raw_fd(), libc::POLLIN, deadline)? {
            return Ok(Fate::Silent);
        }
        let mut buf = [0u8; 64];
        Ok(match (&self.sock).read(&mut buf) {
            Ok(0) => Fate::Eof,
            Ok(n) => Fate::Data(buf[..n].to_vec()),
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => Fate::Reset,
            Err(e) => Fate::Error(e),
        })
    }
}

#[derive(Debug)]
pub enum Fate {
    Data(Vec<u8>),
    Eof,
    Reset,
    Silent,
    Error(io::Error),
}

/// What the clients experienced.
#[derive(Default, Debug)]
pub struct Fates {
    pub data: usize,
    pub resets: usize,
    pub eofs: usize,
    pub silent: usize,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl fmt::Display for Fates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data={} reset={} eof={} silent={} error={}",
            self.data, self.resets, self.eofs, self.silent, self.errors
        )?;
        match &self.first_error {
            Some(e) => write!(f, " ({e})"),
            None => Ok(()),
        }
    }
}

/// Collects the fate of each client, all within one shared deadline.
pub fn fates<'a>(
    clients: impl IntoIterator<Item = &'a Client>,
    deadline: Deadline,
) -> Result<Fates> {
    let mut f = Fates::default();
    for c in clients {
        match c.fate(deadline)? {
            Fate::Data(_) => f.data += 1,
            Fate::Reset => f.resets += 1,
            Fate::Eof => f.eofs += 1,
            Fate::Silent => f.silent += 1,
            Fate::Error(e) => {
                f.errors += 1;
                f.first_error.get_or_insert(e.to_string());
            }
        }
    }
    Ok(f)
}

/// Result of talking over every accepted connection.
#[derive(Default)]
pub struct Exchange {
    /// accepted connections whose peer port is one of our clients
    pub matched: usize,
    /// the server read exactly the hello its client sent
    pub hello_ok: usize,
    /// the client read the server's reply: the connection is alive
    pub alive: usize,
    /// the client saw ECONNRESET instead
    pub resets: usize,
    /// the server side reached ESTABLISHED
    pub established: usize,
    /// what the clients that no accepted socket belongs to saw
    pub orphans: Fates,
}

impl Exchange {
    /// Each of `n` accepted clients had its hello read intact and read the
    /// answer; none was reset.
    pub fn check_served(&self, ck: &mut Checks, n: usize) {
        ck.eq("accepted sockets of our clients", self.matched, n);
        ck.eq("hellos read intact", self.hello_ok, n);
        ck.eq("clients answered", self.alive, n);
        ck.eq("clients reset", self.resets, 0);
    }

    /// As [`Exchange::check_served`], and no client was left unaccepted.
    pub fn check_all_served(&self, ck: &mut Checks, n: usize) {
        self.check_served(ck, n);
        ck.eq(
            "clients never accepted",
            self.orphans.to_string(),
            Fates::default().to_string(),
        );
    }
}

/// For every accepted connection: find its client by port, read the hello
/// on the server side, answer, and have the client read the answer.
/// The client hellos must have been sent already.
pub fn exchange(clients: &[Client], accepted: &[Accepted]) -> Result<Exchange> {
    let deadline = Deadline::after(event_timeout());
    let mut ex = Exchange::default();
    let mut matched = vec![false; clients.len()];
    for a in accepted {
        let Some(ci) = clients.iter().position(|c| c.port == a.peer_port) else {
            continue;
        };
        ex.matched += 1;
        matched[ci] = true;
        let want = &clients[ci].hello;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < want.len() && poll_fd(a.sock.as_raw_fd(), libc::POLLIN, deadline)? {
            match (&a.sock).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            }
        }
        if &got == want {
            ex.hello_ok += 1;
        }
        if (&a.sock)
            .write(PONG)
            .map(|n| n == PONG.len())
            .unwrap_or(false)
        {
            match clients[ci].fate(deadline)? {
                Fate::Data(d) if d == PONG => ex.alive += 1,
                Fate::Reset => ex.resets += 1,
                _ => {}
            }
        }
    }
    let orphans = clients.iter().zip(&matched).filter(|(_, m)| !**m);
    ex.orphans = fates(orphans.map(|(c, _)| c), deadline)?;
    // The server child may still be in SYN_RECV (Fast Open) until the
    // client's ACK of the reply lands; give it the remaining time.
    let _ = wait_until(deadline.remaining(), || {
        let mut n = 0;
        for a in accepted {
            if tcp_state(&a.sock)? == TCP_ESTABLISHED {
                n += 1;
            }
        }
        ex.established = n;
        Ok(n == accepted.len())
    })?;
    Ok(ex)
}
