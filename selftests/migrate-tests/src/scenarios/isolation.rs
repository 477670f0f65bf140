// SPDX-License-Identifier: GPL-2.0
//! Where a migrated socket may never go: to a listener of another network
//! namespace, of another user, or bound to another device. The kernel keeps
//! such listeners out of the reuseport group (a namespace has its own
//! hash tables; `inet_csk_bind_conflict()` refuses another uid's socket;
//! `inet_reuseport_add_sock()` joins only listeners bound to the same
//! device), and migration only ever picks inside the group. These tests
//! hold the series to that: they would fail if a change to the target
//! choice looked beyond the group.

use std::sync::mpsc;
use std::thread;

use anyhow::{anyhow, Context, Result};

use super::common::{as_uid, connect_greet, expect_all_reset, u};
use crate::harness::{
    count_on, enter_fresh_netns, event_timeout, exchange, fates, note, set_migrate_req,
    start_trace, Checks, Deadline, Family, Group, Kernel, Reason, Stop, TcpExt,
};

/// L0 of this namespace closes with one child queued and no other listener
/// here, while a listener on the same address and port listens in a second
/// namespace with migration on: the child is reset, the other namespace's
/// listener receives nothing and counts no migration.
pub fn other_netns(fam: Family, kernel: Kernel) -> Result<()> {
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 1)?;
    let port = g.port;
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // The other namespace lives in a thread of its own; its listener is a
    // descriptor this thread can query, its counters are read there.
    let other = thread::spawn(move || -> Result<TcpExt> {
        enter_fresh_netns()?;
        set_migrate_req(true)?;
        let o = Group::bind_on(fam, Some(port), &[None])?;
        o.listen(0)?;
        let start = TcpExt::read()?;
        tx.send(o).map_err(|_| anyhow!("send the other listener"))?;
        done_rx.recv().ok();
        let now = TcpExt::read()?;
        let mut ck = Checks::new();
        ck.migrations("in the other namespace", &start, &now, 0, 0)?;
        ck.finish()?;
        Ok(now)
    });
    let o = rx.recv().context("the other namespace's listener")?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let clients = connect_greet(fam, &g, 0..1)?;
    ck.eq("L0 queue", g.wait_queued(0, 1)?, 1);
    ck.gate("setup")?;

    let trace = start_trace(kernel, port)?;
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    ck.eq("other namespace's queue after close", o.queued(0)?, 0);
    let f = fates(&clients, Deadline::after(event_timeout()))?;
    ck.eq(
        "client fates",
        f.to_string(),
        "data=0 reset=1 eof=0 silent=0 error=0".to_string(),
    );
    ck.all_failed(
        kernel,
        &start,
        trace.as_ref(),
        "child",
        Reason::NoListener,
        1,
    )?;
    done_tx.send(()).ok();
    other
        .join()
        .map_err(|_| anyhow!("the other namespace's thread panicked"))??;
    drop(o);
    ck.finish()
}

/// A socket of another user cannot bind the group's port with
/// SO_REUSEPORT (EADDRINUSE, as upstream), so it can never be a target.
pub fn other_uid(fam: Family, _kernel: Kernel) -> Result<()> {
    set_migrate_req(true)?;
    let g = Group::bind(fam, 1)?;
    g.listen(0)?;
    let port = g.port;
    let bound = as_uid(65534, move || {
        let s = fam.tcp_socket()?;
        s.set_reuse_port(true)?;
        Ok(s.bind(&fam.loopback(port).into()))
    })?;
    let mut ck = Checks::new();
    ck.eq(
        "bind(2) of uid 65534 to the group's port",
        format!("{:?}", bound.map_err(|e| e.raw_os_error())),
        format!("{:?}", Err::<(), _>(Some(libc::EADDRINUSE))),
    );
    note("another user's socket is refused the port: EADDRINUSE");
    ck.finish()
}

/// L0 and L2 are bound to `lo` (SO_BINDTODEVICE), L1 to no device; all
/// three use the port with SO_REUSEPORT. Connections are made while L0
/// listens alone (a lookup takes the first group it meets in the hash
/// chain, so with two groups listening the placement would depend on the
/// chain's order). When L0 closes with L1 listening, its children may
/// only go to L2, the listener of its own group: L1 forms a group of its
/// own.
pub fn other_device(fam: Family, kernel: Kernel) -> Result<()> {
    const N: usize = 3;
    set_migrate_req(true)?;
    let mut g = Group::bind_on(fam, None, &[Some("lo"), None, Some("lo")])?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let clients = connect_greet(fam, &g, 0..N)?;
    ck.eq("L0 queue", g.wait_queued(0, N as u32)?, N as u32);
    g.listen(1)?;
    ck.gate("setup")?;

    // Only L1 listens besides L0, and it is not in L0's group.
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    expect_all_reset(&mut ck, &g, &clients, 1)?;
    ck.all_failed(
        kernel,
        &start,
        trace.as_ref(),
        "child",
        Reason::NoListener,
        u(N),
    )?;
    ck.gate("no listener of the same device")?;
    ck.finish()?;

    // Again with L2 listening: the children go there, never to L1.
    let mut g = Group::bind_on(fam, None, &[Some("lo"), None, Some("lo")])?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let clients = connect_greet(fam, &g, 0..N)?;
    ck.eq(
        "L0 queue (second round)",
        g.wait_queued(0, N as u32)?,
        N as u32,
    );
    g.listen(1)?;
    g.listen(2)?;
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    ck.migrations("", &start, &now, u(N), 0)?;
    ck.eq("L1 queue after close", g.queued(1)?, 0);
    ck.eq("L2 queue after close", g.queued(2)?, N as u32);
    let acc = g.accept_all(N)?;
    ck.eq("accepted from L2", count_on(&acc, 2), N);
    exchange(&clients, &acc)?.check_all_served(&mut ck, N);
    note("children of a listener bound to lo moved only to the other one bound to lo");
    ck.finish()
}
