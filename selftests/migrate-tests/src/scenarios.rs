//! One function per scenario, each parametrised by address family. Every
//! scenario runs alone in a fresh network namespace (see main.rs), so the
//! TcpExt counters start from zero and sysctls set here die with it.
//!
//! Listener placement is made deterministic without luck: a new connection
//! can only land on a socket that listen()s at that moment, so the tests
//! connect while exactly the intended listener is listening (or steer SYNs
//! with the BPF program), and stop a listener only when the survivors are
//! the ones the test means to receive the migrated sockets.

use std::ops::Range;
use std::time::Duration;

use anyhow::Result;

use crate::bpf::{HoldAck, Migrate, Stat, Steer};
use crate::harness::{
    count_on, exchange, fates, set_migrate_req, set_sysctl, tcp_state, wait_until, Checks, Client,
    Deadline, Family, Fates, Group, Stop, TcpExt, EVENT_TIMEOUT, MIGRATE_FAIL, MIGRATE_OK,
    SYNACK_RETRANS, TCP_SYN_RECV, TFO_PASSIVE,
};

/// The first SYN+ACK retransmit comes ~1 s after the SYN+ACK (kernel timer,
/// wall clock, so not slowed by emulation much); leave a wide margin.
const SYNACK_RTX_TIMEOUT: Duration = Duration::from_secs(6);

/// tcp_fastopen: client (0x1) + server (0x2) enabled, client sends data in
/// the SYN without a cookie (0x4), server accepts data without one (0x200).
const TFO_NO_COOKIES: &str = "519";

fn connect_greet(fam: Family, g: &Group, ids: Range<usize>) -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for id in ids {
        let mut c = Client::connect(fam, g.addr(), id)?;
        c.send_hello()?;
        out.push(c);
    }
    Ok(out)
}

fn u(n: usize) -> u64 {
    n as u64
}

/// Children in a listener's accept queue move when the listener is closed
/// or shut down, with `tcp_migrate_req=1` and no BPF program.
///
/// L0 listens alone and gets FIRST connections; L1 starts listening, L0
/// stops, so all FIRST children must move to L1. More connections then land
/// on L1 (the only listener) for TOTAL queued there. L2 and L3 start
/// listening and L1 stops: all TOTAL children (FIRST of them for the second
/// time) move, spread over L2 and L3 by the kernel's hash.
pub fn queued_children(fam: Family, how: Stop) -> Result<()> {
    const FIRST: usize = 3;
    const TOTAL: usize = 7;
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 4)?;
    let mut ck = Checks::new();
    let start = TcpExt::read()?;

    g.listen(0)?;
    let mut clients = connect_greet(fam, &g, 0..FIRST)?;
    ck.eq(
        "L0 queue after connects",
        g.wait_queued(0, FIRST as u32)?,
        FIRST as u32,
    );
    ck.gate("setup")?;

    g.listen(1)?;
    g.stop(0, how)?;
    let now = TcpExt::read()?;
    ck.eq("L1 queue after stopping L0", g.queued(1)?, FIRST as u32);
    ck.eq(
        "TCPMigrateReqSuccess after stopping L0",
        now.since(&start, MIGRATE_OK)?,
        u(FIRST),
    );
    ck.eq(
        "TCPMigrateReqFailure after stopping L0",
        now.since(&start, MIGRATE_FAIL)?,
        0,
    );
    ck.gate("first stop")?;

    clients.extend(connect_greet(fam, &g, FIRST..TOTAL)?);
    ck.eq(
        "L1 queue after more connects",
        g.wait_queued(1, TOTAL as u32)?,
        TOTAL as u32,
    );
    ck.gate("second connects")?;

    g.listen(2)?;
    g.listen(3)?;
    g.stop(1, how)?;
    let now = TcpExt::read()?;
    let (q2, q3) = (g.queued(2)?, g.queued(3)?);
    ck.eq("L2+L3 queues after stopping L1", q2 + q3, TOTAL as u32);
    ck.eq(
        "TCPMigrateReqSuccess after both stops",
        now.since(&start, MIGRATE_OK)?,
        u(FIRST + TOTAL),
    );
    ck.eq(
        "TCPMigrateReqFailure after both stops",
        now.since(&start, MIGRATE_FAIL)?,
        0,
    );
    ck.gate("second stop")?;

    let acc = g.accept_all(TOTAL)?;
    ck.eq("accepted", acc.len(), TOTAL);
    ck.eq("accepted from stopped L0", count_on(&acc, 0), 0);
    ck.eq("accepted from stopped L1", count_on(&acc, 1), 0);
    ck.eq(
        "accepted from L2 vs its queue",
        u(count_on(&acc, 2)),
        q2.into(),
    );
    ck.eq(
        "accepted from L3 vs its queue",
        u(count_on(&acc, 3)),
        q3.into(),
    );
    let ex = exchange(&clients, &acc)?;
    ck.eq("accepted sockets of our clients", ex.matched, TOTAL);
    ck.eq("hellos read intact", ex.hello_ok, TOTAL);
    ck.eq("clients answered", ex.alive, TOTAL);
    ck.eq("clients reset", ex.resets, 0);
    ck.eq(
        "clients never accepted",
        ex.orphans.to_string(),
        Fates::default().to_string(),
    );
    let end = TcpExt::read()?;
    ck.eq(
        "TCPMigrateReqSuccess at end",
        end.since(&start, MIGRATE_OK)?,
        u(FIRST + TOTAL),
    );
    ck.eq(
        "TCPMigrateReqFailure at end",
        end.since(&start, MIGRATE_FAIL)?,
        0,
    );
    ck.finish()
}

/// What makes a half-open request (TCP_NEW_SYN_RECV) of a closed listener move.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// the client's ACK (carrying data) arrives after the close
    Ack,
    /// the SYN+ACK retransmit timer fires after the close
    Timer,
}

/// Requests still in the handshake are not in any accept queue, so
/// close() leaves them alone; they move to L1 later, either when the held
/// final ACK finally arrives or when their SYN+ACK timer fires.
pub fn in_flight(fam: Family, trigger: Trigger) -> Result<()> {
    const N: usize = 4;
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let hold = HoldAck::attach(g.port)?;
    let start = TcpExt::read()?;

    // connect() completes on the SYN+ACK; the final ACK is dropped by XDP.
    let mut clients = Vec::new();
    for id in 0..N {
        clients.push(Client::connect(fam, g.addr(), id)?);
    }
    wait_until(EVENT_TIMEOUT, || Ok(hold.dropped()? >= u(N)))?;
    ck.eq("final ACKs held back", hold.dropped()?, u(N));
    ck.eq("L0 queue while ACKs are held", g.queued(0)?, 0);
    ck.gate("handshakes held")?;

    g.listen(1)?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    ck.eq(
        "TCPMigrateReqSuccess right after close",
        now.since(&start, MIGRATE_OK)?,
        0,
    );
    ck.eq(
        "TCPMigrateReqFailure right after close",
        now.since(&start, MIGRATE_FAIL)?,
        0,
    );
    ck.eq("L1 queue right after close", g.queued(1)?, 0);
    ck.gate("close")?;

    if trigger == Trigger::Timer {
        // The timer handler moves the request, retransmits the SYN+ACK from
        // the new listener, then counts the success.
        let fired = wait_until(SYNACK_RTX_TIMEOUT, || {
            Ok(TcpExt::read()?.since(&start, SYNACK_RETRANS)? >= u(N))
        })?;
        if fired {
            wait_until(EVENT_TIMEOUT, || {
                Ok(TcpExt::read()?.since(&start, MIGRATE_OK)? >= u(N))
            })?;
        }
        let now = TcpExt::read()?;
        ck.ge(
            "TCPSynRetrans after the timers",
            now.since(&start, SYNACK_RETRANS)?,
            u(N),
        );
        ck.eq(
            "TCPMigrateReqSuccess after the timers",
            now.since(&start, MIGRATE_OK)?,
            u(N),
        );
        ck.eq(
            "TCPMigrateReqFailure after the timers",
            now.since(&start, MIGRATE_FAIL)?,
            0,
        );
        ck.eq("L1 queue before the ACKs", g.queued(1)?, 0);
        ck.gate("timer")?;
    }

    hold.release()?;
    for c in &mut clients {
        c.send_hello()?;
    }
    let acc = g.accept_all(N)?;
    ck.eq("accepted", acc.len(), N);
    ck.eq("accepted from L1", count_on(&acc, 1), N);
    let ex = exchange(&clients, &acc)?;
    ck.eq("accepted sockets of our clients", ex.matched, N);
    ck.eq("hellos read intact", ex.hello_ok, N);
    ck.eq("clients answered", ex.alive, N);
    ck.eq("clients reset", ex.resets, 0);
    ck.eq(
        "clients never accepted",
        ex.orphans.to_string(),
        Fates::default().to_string(),
    );
    let end = TcpExt::read()?;
    ck.eq(
        "TCPMigrateReqSuccess at end",
        end.since(&start, MIGRATE_OK)?,
        u(N),
    );
    ck.eq(
        "TCPMigrateReqFailure at end",
        end.since(&start, MIGRATE_FAIL)?,
        0,
    );
    if trigger == Trigger::Ack {
        // No SYN+ACK was retransmitted, so the timer cannot have done the move.
        ck.eq(
            "TCPSynRetrans (ACK path only)",
            end.since(&start, SYNACK_RETRANS)?,
            0,
        );
    }
    ck.finish()
}

/// Fast Open children are full sockets in TCP_SYN_RECV sitting in the
/// accept queue (the data came with the SYN); with the final ACK held they
/// are still SYN_RECV when the listener closes, and must move all the same.
pub fn fastopen(fam: Family) -> Result<()> {
    const N: usize = 4;
    set_migrate_req(true)?;
    set_sysctl("net.ipv4.tcp_fastopen", TFO_NO_COOKIES)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    g.enable_fastopen(64)?;
    g.listen(0)?;
    let hold = HoldAck::attach(g.port)?;
    let start = TcpExt::read()?;

    let mut clients = Vec::new();
    for id in 0..N {
        clients.push(Client::connect_fastopen(fam, g.addr(), id)?);
    }
    wait_until(EVENT_TIMEOUT, || Ok(hold.dropped()? >= u(N)))?;
    ck.eq("final ACKs held back", hold.dropped()?, u(N));
    ck.eq(
        "L0 queue (Fast Open children)",
        g.wait_queued(0, N as u32)?,
        N as u32,
    );
    ck.eq(
        "TCPFastOpenPassive",
        TcpExt::read()?.since(&start, TFO_PASSIVE)?,
        u(N),
    );
    ck.gate("Fast Open handshakes")?;

    g.listen(1)?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    ck.eq("L1 queue after close", g.queued(1)?, N as u32);
    ck.eq(
        "TCPMigrateReqSuccess after close",
        now.since(&start, MIGRATE_OK)?,
        u(N),
    );
    ck.eq(
        "TCPMigrateReqFailure after close",
        now.since(&start, MIGRATE_FAIL)?,
        0,
    );
    ck.gate("close")?;

    // Accept while the ACKs are still held: the moved children must still
    // be in SYN_RECV, i.e. this really was the Fast Open path.
    let acc = g.accept_all(N)?;
    ck.eq("accepted", acc.len(), N);
    ck.eq("accepted from L1", count_on(&acc, 1), N);
    let mut syn_recv = 0;
    for a in &acc {
        if tcp_state(&a.sock)? == TCP_SYN_RECV {
            syn_recv += 1;
        }
    }
    ck.eq("accepted children in SYN_RECV", syn_recv, N);
    ck.gate("accept")?;

    hold.release()?;
    let ex = exchange(&clients, &acc)?;
    ck.eq("accepted sockets of our clients", ex.matched, N);
    ck.eq("SYN data read intact", ex.hello_ok, N);
    ck.eq("clients answered", ex.alive, N);
    ck.eq("clients reset", ex.resets, 0);
    ck.eq(
        "clients never accepted",
        ex.orphans.to_string(),
        Fates::default().to_string(),
    );
    ck.eq("children ESTABLISHED after ACKs pass", ex.established, N);
    let end = TcpExt::read()?;
    ck.eq(
        "TCPMigrateReqSuccess at end",
        end.since(&start, MIGRATE_OK)?,
        u(N),
    );
    ck.eq(
        "TCPMigrateReqFailure at end",
        end.since(&start, MIGRATE_FAIL)?,
        0,
    );
    ck.finish()
}

/// Why the children of a closed listener have nowhere to go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// tcp_migrate_req=0 and no migrate program, although L1 listens.
    SysctlOff,
    /// tcp_migrate_req=1 but L0 was the group's only listener (L1 is bound
    /// to the port and never listens).
    NoTarget,
}

/// Children that cannot migrate are reset when their listener closes.
///
/// Kernel facts (checked on 6.18), asserted below:
/// - SysctlOff: TCPMigrateReqFailure does NOT move. A listener that cannot
///   migrate leaves its reuseport group before its queue is purged, so the
///   purge never looks for a target and never counts a failure.
/// - NoTarget: it moves once per child. The closed listener stays in the
///   group (migration enabled), the kernel looks for a target, finds no
///   listening socket and counts a failure.
pub fn lost_children(fam: Family, why: Lost) -> Result<()> {
    const N: usize = 4;
    set_migrate_req(why == Lost::NoTarget)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let clients = connect_greet(fam, &g, 0..N)?;
    ck.eq(
        "L0 queue after connects",
        g.wait_queued(0, N as u32)?,
        N as u32,
    );
    ck.gate("setup")?;

    if why == Lost::SysctlOff {
        g.listen(1)?;
    }
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    expect_all_reset(&mut ck, &g, &clients, 1)?;
    let failures = match why {
        Lost::SysctlOff => 0,
        Lost::NoTarget => N,
    };
    ck.eq("TCPMigrateReqSuccess", now.since(&start, MIGRATE_OK)?, 0);
    ck.eq(
        "TCPMigrateReqFailure",
        now.since(&start, MIGRATE_FAIL)?,
        u(failures),
    );
    ck.finish()
}

/// Every client got ECONNRESET and listener `other` received nothing.
fn expect_all_reset(ck: &mut Checks, g: &Group, clients: &[Client], other: usize) -> Result<()> {
    let n = clients.len();
    ck.eq(&format!("L{other} queue after close"), g.queued(other)?, 0);
    let f = fates(clients, Deadline::after(EVENT_TIMEOUT))?;
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

/// Sets up the steer program on a group of `n` listeners: L0 listens
/// first and gets the program (it then covers the whole group), every
/// listener goes into the socket array at its own index.
fn steered_group(fam: Family, n: usize) -> Result<(Group, Steer)> {
    let steer = Steer::load()?;
    let g = Group::bind(fam, n)?;
    g.listen(0)?;
    steer.attach(g.sock(0)?)?;
    for i in 1..n {
        g.listen(i)?;
    }
    for i in 0..n {
        steer.set_slot(i as u32, g.sock(i)?)?;
    }
    Ok((g, steer))
}

fn steer_stats(s: &Steer) -> Result<String> {
    let mut out = Vec::new();
    for st in Stat::ALL {
        out.push(format!("{st:?}={}", s.stat(st)?));
    }
    Ok(out.join(" "))
}

/// A migrate program choosing L3 gets every migrating child, although L2
/// listens too, and although tcp_migrate_req=0: attaching a
/// SELECT_OR_MIGRATE program alone makes the group migration capable.
pub fn bpf_select(fam: Family) -> Result<()> {
    const ON_L0: usize = 3;
    const ON_L1: usize = 2;
    const ALL: usize = ON_L0 + ON_L1;
    set_migrate_req(false)?;
    let (mut g, steer) = steered_group(fam, 4)?;
    let mut ck = Checks::new();

    steer.place_syns(Some(0))?;
    let mut clients = connect_greet(fam, &g, 0..ON_L0)?;
    steer.place_syns(Some(1))?;
    clients.extend(connect_greet(fam, &g, ON_L0..ALL)?);
    ck.eq("L0 queue", g.wait_queued(0, ON_L0 as u32)?, ON_L0 as u32);
    ck.eq("L1 queue", g.wait_queued(1, ON_L1 as u32)?, ON_L1 as u32);
    ck.eq("L2 queue", g.queued(2)?, 0);
    ck.eq("L3 queue", g.queued(3)?, 0);
    ck.gate("placement")?;

    steer.on_migrate(Migrate::To(3))?;
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    g.stop(1, Stop::Shutdown)?;
    let now = TcpExt::read()?;
    ck.eq(
        "L3 queue after stopping L0 and L1",
        g.queued(3)?,
        ALL as u32,
    );
    ck.eq("L2 queue after stopping L0 and L1", g.queued(2)?, 0);
    ck.eq(
        "TCPMigrateReqSuccess",
        now.since(&start, MIGRATE_OK)?,
        u(ALL),
    );
    ck.eq("TCPMigrateReqFailure", now.since(&start, MIGRATE_FAIL)?, 0);
    ck.gate("migration")?;

    let acc = g.accept_all(ALL)?;
    ck.eq("accepted", acc.len(), ALL);
    ck.eq("accepted from L3", count_on(&acc, 3), ALL);
    ck.eq("accepted from L2", count_on(&acc, 2), 0);
    let ex = exchange(&clients, &acc)?;
    ck.eq("accepted sockets of our clients", ex.matched, ALL);
    ck.eq("hellos read intact", ex.hello_ok, ALL);
    ck.eq("clients answered", ex.alive, ALL);
    ck.eq("clients reset", ex.resets, 0);
    ck.eq(
        "clients never accepted",
        ex.orphans.to_string(),
        Fates::default().to_string(),
    );
    let want = format!(
        "SynSelected={ALL} MigrateEstablished={ALL} MigrateSynRecv=0 MigrateReqAck=0 \
         MigrateReqTimer=0 MigrateDropped=0 SelectError=0"
    );
    ck.eq("program counters", steer_stats(&steer)?, want);
    ck.finish()
}

/// A migrate program answering SK_DROP vetoes the move even with
/// tcp_migrate_req=1: children are reset and each veto counts as a failure.
pub fn bpf_drop(fam: Family) -> Result<()> {
    const N: usize = 4;
    set_migrate_req(true)?;
    let (mut g, steer) = steered_group(fam, 2)?;
    let mut ck = Checks::new();

    steer.place_syns(Some(0))?;
    let clients = connect_greet(fam, &g, 0..N)?;
    ck.eq("L0 queue", g.wait_queued(0, N as u32)?, N as u32);
    ck.eq("L1 queue", g.queued(1)?, 0);
    ck.gate("placement")?;

    steer.on_migrate(Migrate::Drop)?;
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    expect_all_reset(&mut ck, &g, &clients, 1)?;
    ck.eq("TCPMigrateReqSuccess", now.since(&start, MIGRATE_OK)?, 0);
    ck.eq(
        "TCPMigrateReqFailure",
        now.since(&start, MIGRATE_FAIL)?,
        u(N),
    );
    let want = format!(
        "SynSelected={N} MigrateEstablished=0 MigrateSynRecv=0 MigrateReqAck=0 \
         MigrateReqTimer=0 MigrateDropped={N} SelectError=0"
    );
    ck.eq("program counters", steer_stats(&steer)?, want);
    ck.finish()
}
