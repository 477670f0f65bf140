// SPDX-License-Identifier: GPL-2.0
//! Helpers shared by more than one scenario module: connecting clients, the
//! steer program's setup, held handshakes and the threads of the gate races.

use std::ops::Range;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::bpf::{HoldAck, Stat, Steer};
use crate::harness::{
    count_on, event_timeout, exchange, fates, note, pin_to_cpu, wait_until, Checks, Client,
    Deadline, Family, Group,
};

/// The first SYN+ACK retransmit comes ~1 s after the SYN+ACK (kernel timer,
/// wall clock, so not slowed by emulation much); leave a wide margin.
pub(super) const SYNACK_RTX_TIMEOUT: Duration = Duration::from_secs(6);

/// tcp_fastopen: client (0x1) + server (0x2) enabled, client sends data in
/// the SYN without a cookie (0x4), server accepts data without one (0x200).
pub(super) const TFO_NO_COOKIES: &str = "519";

pub(super) fn connect_greet(fam: Family, g: &Group, ids: Range<usize>) -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for id in ids {
        let mut c = Client::connect(fam, g.addr(), id)?;
        c.send_hello()?;
        out.push(c);
    }
    Ok(out)
}

/// L0 listens alone and `n` clients connect and greet: checks all `n`
/// children wait in L0's accept queue before the test goes on.
pub(super) fn children_on_l0(
    fam: Family,
    g: &Group,
    ck: &mut Checks,
    n: usize,
) -> Result<Vec<Client>> {
    g.listen(0)?;
    let clients = connect_greet(fam, g, 0..n)?;
    ck.eq(
        "L0 queue after connects",
        g.wait_queued(0, n as u32)?,
        n as u32,
    );
    ck.gate("setup")?;
    Ok(clients)
}

pub(super) fn u(n: usize) -> u64 {
    n as u64
}

/// Every client got ECONNRESET and listener `other` received nothing.
pub(super) fn expect_all_reset(
    ck: &mut Checks,
    g: &Group,
    clients: &[Client],
    other: usize,
) -> Result<()> {
    let n = clients.len();
    ck.eq(&format!("L{other} queue after close"), g.queued(other)?, 0);
    let f = fates(clients, Deadline::after(event_timeout()))?;
    ck.eq(
        "client fates",
        f.to_string(),
        format!("data=0 reset={n} eof=0 silent=0 error=0"),
    );
    let mut acc = Vec::new();
    g.accept_now(other, &mut acc)?;
    ck.eq(&format!("accepted from L{other}"), acc.len(), 0);
    Ok(())
}

/// Sets up the steer program on a group of `n` listeners.
pub(super) fn steered_group(fam: Family, n: usize) -> Result<(Group, Steer)> {
    let g = Group::bind(fam, n)?;
    let steer = steer_listen(&g)?;
    Ok((g, steer))
}

/// Every listener of `g` listens: L0 first, which gets the program (it then
/// covers the whole group), and each goes into the socket array at its own
/// index.
pub(super) fn steer_listen(g: &Group) -> Result<Steer> {
    let steer = Steer::load()?;
    g.listen(0)?;
    steer.attach(g.sock(0)?)?;
    for i in 1..g.len() {
        g.listen(i)?;
    }
    for i in 0..g.len() {
        steer.set_slot(i as u32, g.sock(i)?)?;
    }
    Ok(steer)
}

pub(super) fn steer_stats(s: &Steer) -> Result<String> {
    let mut out = Vec::new();
    for st in Stat::ALL {
        out.push(format!("{st:?}={}", s.stat(st)?));
    }
    Ok(out.join(" "))
}

/// A new client (`id`) connects to `g` while only L0 listens there, and
/// L0 accepts and serves it: the listener works.
pub(super) fn serves_new_client(fam: Family, g: &Group, ck: &mut Checks, id: usize) -> Result<()> {
    let clients = connect_greet(fam, g, id..id + 1)?;
    let acc = g.accept_all(1)?;
    ck.eq("new clients accepted", acc.len(), 1);
    exchange(&clients, &acc)?.check_all_served(ck, 1);
    Ok(())
}

/// Every one of `clients` is reset (within the event timeout).
pub(super) fn all_reset(ck: &mut Checks, what: &str, clients: &[Client]) -> Result<()> {
    let f = fates(clients, Deadline::after(event_timeout()))?;
    ck.eq(
        what,
        f.to_string(),
        format!("data=0 reset={} eof=0 silent=0 error=0", clients.len()),
    );
    Ok(())
}

/// Whether `e` comes from the system error `errno`.
pub(super) fn caused_by(e: &anyhow::Error, errno: i32) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(errno))
    })
}

/// Whether `e` comes from ECONNRESET.
fn is_reset(e: &anyhow::Error) -> bool {
    caused_by(e, libc::ECONNRESET)
}

/// Runs `f` on a thread whose credentials are `uid`. Credentials are per
/// thread in the kernel: setresuid(2) as a raw system call changes this
/// thread only (libc's wrapper would change every thread of the process).
pub(super) fn as_uid<T: Send + 'static>(
    uid: u32,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    thread::spawn(move || -> Result<T> {
        // SAFETY: plain system call with integer arguments.
        if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setresuid({uid})"));
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("the thread of uid {uid} panicked"))?
}

/// Connects `n` clients to `g` (ids 0..n) with their final ACKs held back
/// by XDP: each leaves a request in the listening socket's SYN queue.
pub(super) fn held_handshakes(fam: Family, g: &Group, n: usize) -> Result<(HoldAck, Vec<Client>)> {
    let hold = HoldAck::attach(g.port)?;
    let clients = (0..n)
        .map(|id| Client::connect(fam, g.addr(), id))
        .collect::<Result<Vec<_>>>()?;
    wait_until(event_timeout(), || Ok(hold.dropped()? >= u(n)))?;
    Ok((hold, clients))
}

/// Runs `f` on a thread pinned to CPU 0 while the caller moves to CPU 1.
///
/// On loopback the server side of what the thread sends runs in softirq on
/// the thread's CPU, where the hashdance gate then spins; a caller sharing
/// that CPU could not run until the gate timed out.
pub(super) fn on_other_cpu<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>> {
    pin_to_cpu(1).context("the hashdance gate needs 2 CPUs")?;
    Ok(thread::spawn(move || {
        pin_to_cpu(0)?;
        f()
    }))
}

/// Passes on `connecting` once the gate holds (`waited` is Ok); else
/// fails with what the client thread got to.
pub(super) fn held_or_report(
    waited: Result<()>,
    connecting: thread::JoinHandle<Result<Client>>,
) -> Result<thread::JoinHandle<Result<Client>>> {
    if let Err(e) = waited {
        let client = match connecting.is_finished() {
            true => format!("connect returned {:?}", join(connecting).map(|_| ())),
            false => "connect still waiting".to_string(),
        };
        return Err(e.context(client));
    }
    Ok(connecting)
}

/// The one child the gate held (`what`) must wait in L1's queue, and be
/// accepted there and serve `client`, which sends its hello first unless
/// it already has (`greet`).
pub(super) fn served_by_l1(
    g: &Group,
    ck: &mut Checks,
    client: Client,
    what: &str,
    greet: bool,
) -> Result<()> {
    let mut clients = vec![client];
    ck.eq(
        &format!("L1 queue after the {what}"),
        g.wait_queued(1, 1)?,
        1,
    );
    ck.gate(what)?;
    if greet {
        clients[0].send_hello()?;
    }
    let acc = g.accept_all(1)?;
    ck.eq("accepted from L1", count_on(&acc, 1), 1);
    exchange(&clients, &acc)?.check_all_served(ck, 1);
    note("the child went to L1 and was served");
    Ok(())
}

/// Joins a thread of [`on_other_cpu`], turning its panic into an error.
pub(super) fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow!("test thread panicked"))?
}

/// Closes L<i> on a thread of [`on_other_cpu`]: a gate in close() holds the
/// listener's socket lock and its CPU with interrupts off.
pub(super) fn close_on_other_cpu(
    g: &mut Group,
    i: usize,
) -> Result<thread::JoinHandle<Result<()>>> {
    let sock = g.take(i)?;
    on_other_cpu(move || {
        drop(sock);
        Ok(())
    })
}

/// What became of a client whose connect() may have failed: its fate, or
/// "reset during connect".
pub(super) fn client_fate(connected: Result<Client>) -> Result<String> {
    Ok(match connected {
        Ok(c) => fates(&[c], Deadline::after(event_timeout()))?.to_string(),
        Err(e) if is_reset(&e) => "reset during connect".into(),
        Err(e) => return Err(e),
    })
}
