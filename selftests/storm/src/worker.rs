// SPDX-License-Identifier: GPL-2.0
//! One server worker process.
//!
//! Protocol with the supervisor: stdin is the control pipe (`hold\n`
//! means "stop accepting, keep the listener open" (a stalled server whose
//! accept queue fills up); `stop\n` or EOF means "stop"); stdout carries one line per event: `ready` once the
//! listener is listening, `closed` once it has been close()d, and
//! `exit served=N errors=M` last.
//!
//! The worker serves connections one at a time: accept, read the request
//! line, spend `work_ms`, write the response, close. A stop request is
//! looked at before every accept, so on stop the worker has nothing
//! accepted and unserved: it close()s the listener at once, without
//! draining the accept queue (what it holds is the kernel's to migrate or
//! reset), reports `closed` and exits.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::Family;

/// What a client sends.
pub const REQUEST: &[u8] = b"GET storm\n";
/// How a worker's answer starts.
pub const RESPONSE_PREFIX: &[u8] = b"OK worker=";
const MAX_REQUEST: usize = 256;

/// The worker's command line (set by the supervisor).
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Number of this worker, in its answers and messages.
    #[arg(long)]
    pub id: u64,
    /// Family of the listener.
    #[arg(long, value_enum)]
    pub family: Family,
    /// Port of the group.
    #[arg(long)]
    pub port: u16,
    /// listen() backlog.
    #[arg(long)]
    pub backlog: i32,
    /// Time spent per request.
    #[arg(long)]
    pub work_ms: u64,
    /// Per-connection I/O timeout.
    #[arg(long)]
    pub timeout_ms: u64,
}

/// A bound, listening SO_REUSEPORT socket on the loopback `port`.
pub fn listener(family: Family, port: u16, backlog: i32) -> Result<Socket> {
    let domain = match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    };
    let s = Socket::new(domain, Type::STREAM, None).context("socket")?;
    if family == Family::V6 {
        s.set_only_v6(true).context("IPV6_V6ONLY")?;
    }
    s.set_reuse_address(true).context("SO_REUSEADDR")?;
    s.set_reuse_port(true).context("SO_REUSEPORT")?;
    let addr = family.addr(port);
    s.bind(&SockAddr::from(addr))
        .with_context(|| format!("bind {addr}"))?;
    s.listen(backlog).context("listen")?;
    Ok(s)
}

fn say(out: &mut impl Write, line: &str) -> Result<()> {
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The worker's main loop (the `worker` subcommand).
pub fn run(a: &WorkerArgs) -> Result<()> {
    let timeout = Duration::from_millis(a.timeout_ms);
    let work = Duration::from_millis(a.work_ms);
    let lsock = listener(a.family, a.port, a.backlog)?;
    lsock.set_nonblocking(true)?;
    let mut out = io::stdout().lock();
    say(&mut out, "ready")?;

    let stdin = io::stdin();
    let ctl = stdin.as_fd();
    let (mut served, mut errors) = (0u64, 0u64);
    let mut held = false;
    loop {
        let (control, readable) = {
            let mut fds = [
                PollFd::new(ctl, PollFlags::POLLIN),
                PollFd::new(lsock.as_fd(), PollFlags::POLLIN),
            ];
            // A held worker watches only its control pipe.
            let n = if held { 1 } else { 2 };
            match poll(&mut fds[..n], PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => bail!("poll: {e}"),
            }
            let ev = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
            (!ev(0).is_empty(), n == 2 && !ev(1).is_empty())
        };
        // A control message wins over a pending connection.
        if control {
            let mut msg = [0u8; 64];
            let n = match io::stdin().lock().read(&mut msg) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n > 0 && !msg[..n].contains(&b's') {
                held = true;
                continue;
            }
            break;
        }
        if !readable {
            continue;
        }
        match lsock.accept() {
            Ok((conn, _)) => match serve(conn, a.id, work, timeout) {
                Ok(()) => served += 1,
                Err(e) => {
                    errors += 1;
                    eprintln!("storm worker {}: connection: {e:#}", a.id);
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A child reset while queued (e.g. the client gave up).
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Err(e) => bail!("accept: {e}"),
        }
    }
    // Reload: close the listener at once, queue and all.
    drop(lsock);
    say(&mut out, "closed")?;
    say(&mut out, &format!("exit served={served} errors={errors}"))?;
    Ok(())
}

fn serve(conn: Socket, id: u64, work: Duration, timeout: Duration) -> Result<()> {
    conn.set_nonblocking(false)?;
    let mut stream: TcpStream = conn.into();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || len == buf.len() {
            bail!("no request line within {timeout:?} / {MAX_REQUEST} bytes");
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => bail!("EOF before the request line"),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read request"),
        }
    }
    if !work.is_zero() {
        std::thread::sleep(work);
    }
    let mut resp = RESPONSE_PREFIX.to_vec();
    resp.extend_from_slice(format!("{id}\n").as_bytes());
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&resp).context("write response")?;
    // Dropping the stream close()s it: FIN after the response.
    Ok(())
}
