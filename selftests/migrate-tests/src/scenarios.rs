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
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

mod closed_before_queued;
mod isolation;
mod nomem;
pub use closed_before_queued::{closed_before_queued, Path};
pub use isolation::{other_device, other_netns, other_uid};
pub use nomem::{nomem_at_close, Alloc};

use crate::bpf::{
    DeadChildGate, Gate, GateAt, HoldAck, Migrate, Stat, Steer, CHAIN_ACK_DONE, CHAIN_ACK_HELD,
};
use crate::harness::{
    count_on, event_timeout, exchange, fates, note, pin_to_cpu, poll_fd, read_sysctl, scaled,
    set_migrate_req, set_sysctl, setsockopt_int, start_trace, tcp_state, wait_until, write_sysctl,
    Accepted, Checks, Client, Deadline, Family, Group, Kernel, Reason, Stop, TcpExt, ALL_FAILURES,
    LISTEN_DROPS, LISTEN_OVERFLOWS, MIGRATE_FAIL, MIGRATE_OK, MIGRATE_REQ, SYNACK_RETRANS,
    TCP_SYN_RECV, TFO_PASSIVE,
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

/// L0 listens alone and `n` clients connect and greet: checks all `n`
/// children wait in L0's accept queue before the test goes on.
fn children_on_l0(fam: Family, g: &Group, ck: &mut Checks, n: usize) -> Result<Vec<Client>> {
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

    let mut clients = children_on_l0(fam, &g, &mut ck, FIRST)?;

    g.listen(1)?;
    g.stop(0, how)?;
    let now = TcpExt::read()?;
    ck.eq("L1 queue after stopping L0", g.queued(1)?, FIRST as u32);
    ck.migrations("after stopping L0", &start, &now, u(FIRST), 0)?;
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
    ck.migrations("after both stops", &start, &now, u(FIRST + TOTAL), 0)?;
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
    ex.check_all_served(&mut ck, TOTAL);
    let end = TcpExt::read()?;
    ck.migrations("at end", &start, &end, u(FIRST + TOTAL), 0)?;
    ck.finish()
}

/// L1 and L2 set SO_INCOMING_CPU to CPU 0 and CPU 1, and L0 is closed on
/// `cpu` with N children queued: every child goes to the listener of that
/// CPU, whatever its hash (upstream's preference, which the policy keeps).
/// With a hash choice, all N landing on one listener has odds of 1 in 2^N.
pub fn incoming_cpu_children(fam: Family, cpu: usize) -> Result<()> {
    const N: usize = 12;
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 3)?;
    let mut ck = Checks::new();
    let clients = children_on_l0(fam, &g, &mut ck, N)?;

    for (i, want) in [(1, 0), (2, 1)] {
        setsockopt_int(g.fd(i)?, libc::SOL_SOCKET, libc::SO_INCOMING_CPU, want)
            .with_context(|| format!("SO_INCOMING_CPU on L{i}"))?;
        g.listen(i)?;
    }
    let start = TcpExt::read()?;
    pin_to_cpu(cpu)?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    let here = 1 + cpu;
    ck.eq(
        &format!("L{here} queue after closing L0 on CPU {cpu}"),
        g.queued(here)?,
        N as u32,
    );
    ck.migrations("", &start, &now, u(N), 0)?;
    ck.gate("close")?;

    let acc = g.accept_all(N)?;
    ck.eq(&format!("accepted from L{here}"), count_on(&acc, here), N);
    exchange(&clients, &acc)?.check_all_served(&mut ck, N);
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
    wait_until(event_timeout(), || Ok(hold.dropped()? >= u(N)))?;
    ck.eq("final ACKs held back", hold.dropped()?, u(N));
    ck.eq("L0 queue while ACKs are held", g.queued(0)?, 0);
    ck.gate("handshakes held")?;

    g.listen(1)?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    ck.migrations("right after close", &start, &now, 0, 0)?;
    ck.eq("L1 queue right after close", g.queued(1)?, 0);
    ck.gate("close")?;

    if trigger == Trigger::Timer {
        // The timer handler moves the request, retransmits the SYN+ACK from
        // the new listener, then counts the success.
        let fired = wait_until(scaled(SYNACK_RTX_TIMEOUT), || {
            Ok(TcpExt::read()?.since(&start, SYNACK_RETRANS)? >= u(N))
        })?;
        if fired {
            wait_until(event_timeout(), || {
                Ok(TcpExt::read()?.since(&start, MIGRATE_OK)? >= u(N))
            })?;
        }
        let now = TcpExt::read()?;
        ck.ge(
            "TCPSynRetrans after the timers",
            now.since(&start, SYNACK_RETRANS)?,
            u(N),
        );
        ck.migrations("after the timers", &start, &now, u(N), 0)?;
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
    ex.check_all_served(&mut ck, N);
    let end = TcpExt::read()?;
    ck.migrations("at end", &start, &end, u(N), 0)?;
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
    wait_until(event_timeout(), || Ok(hold.dropped()? >= u(N)))?;
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
    ck.migrations("after close", &start, &now, u(N), 0)?;
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
    ex.check_all_served(&mut ck, N);
    ck.eq("children ESTABLISHED after ACKs pass", ex.established, N);
    let end = TcpExt::read()?;
    ck.migrations("at end", &start, &end, u(N), 0)?;
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
pub fn lost_children(fam: Family, kernel: Kernel, why: Lost) -> Result<()> {
    const N: usize = 4;
    set_migrate_req(why == Lost::NoTarget)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    let clients = children_on_l0(fam, &g, &mut ck, N)?;

    if why == Lost::SysctlOff {
        g.listen(1)?;
    }
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    expect_all_reset(&mut ck, &g, &clients, 1)?;
    let failures = match why {
        Lost::SysctlOff => 0,
        Lost::NoTarget => N,
    };
    ck.migrations("", &start, &now, 0, u(failures))?;
    ck.reasons(
        kernel,
        &start,
        trace.as_ref(),
        "child",
        &[(Reason::NoListener, u(failures))],
    )?;
    ck.finish()
}

/// Every client got ECONNRESET and listener `other` received nothing.
fn expect_all_reset(ck: &mut Checks, g: &Group, clients: &[Client], other: usize) -> Result<()> {
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
fn steered_group(fam: Family, n: usize) -> Result<(Group, Steer)> {
    let g = Group::bind(fam, n)?;
    let steer = steer_listen(&g)?;
    Ok((g, steer))
}

/// Every listener of `g` listens: L0 first, which gets the program (it then
/// covers the whole group), and each goes into the socket array at its own
/// index.
fn steer_listen(g: &Group) -> Result<Steer> {
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
    ck.migrations("", &start, &now, u(ALL), 0)?;
    ck.gate("migration")?;

    let acc = g.accept_all(ALL)?;
    ck.eq("accepted", acc.len(), ALL);
    ck.eq("accepted from L3", count_on(&acc, 3), ALL);
    ck.eq("accepted from L2", count_on(&acc, 2), 0);
    let ex = exchange(&clients, &acc)?;
    ex.check_all_served(&mut ck, ALL);
    let want = format!(
        "SynSelected={ALL} MigrateEstablished={ALL} MigrateSynRecv=0 MigrateReqAck=0 \
         MigrateReqTimer=0 MigrateDropped=0 SelectError=0"
    );
    ck.eq("program counters", steer_stats(&steer)?, want);
    ck.finish()
}

/// A migrate program answering SK_DROP vetoes the move even with
/// tcp_migrate_req=1: children are reset and each veto counts as a failure.
pub fn bpf_drop(fam: Family, kernel: Kernel) -> Result<()> {
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
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;
    g.stop(0, Stop::Close)?;
    let now = TcpExt::read()?;
    expect_all_reset(&mut ck, &g, &clients, 1)?;
    ck.migrations("", &start, &now, 0, u(N))?;
    ck.reasons(
        kernel,
        &start,
        trace.as_ref(),
        "child",
        &[(Reason::Bpf, u(N))],
    )?;
    let want = format!(
        "SynSelected={N} MigrateEstablished=0 MigrateSynRecv=0 MigrateReqAck=0 \
         MigrateReqTimer=0 MigrateDropped={N} SelectError=0"
    );
    ck.eq("program counters", steer_stats(&steer)?, want);
    ck.finish()
}

// ---------------------------------------------------------------------------
// A listener closing while a handshake completes, and why migrations fail.

/// Whether `e` comes from ECONNRESET.
fn is_reset(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ECONNRESET))
    })
}

/// Connects `n` clients to `g` (ids 0..n) with their final ACKs held back
/// by XDP: each leaves a request in the listening socket's SYN queue.
fn held_handshakes(fam: Family, g: &Group, n: usize) -> Result<(HoldAck, Vec<Client>)> {
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
fn on_other_cpu<T: Send + 'static>(
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
fn held_or_report(
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
fn served_by_l1(g: &Group, ck: &mut Checks, client: Client, what: &str, greet: bool) -> Result<()> {
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
fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow!("test thread panicked"))?
}

/// Closes L<i> on a thread of [`on_other_cpu`]: a gate in close() holds the
/// listener's socket lock and its CPU with interrupts off.
fn close_on_other_cpu(g: &mut Group, i: usize) -> Result<thread::JoinHandle<Result<()>>> {
    let sock = g.take(i)?;
    on_other_cpu(move || {
        drop(sock);
        Ok(())
    })
}

/// The final ACK of a handshake finds L0 listening and creates the child,
/// then L0 closes before the child is queued on it (the hashdance gate
/// holds the handshake in that window). Upstream resets the client
/// although L1 listens; the series hands the child to L1.
pub fn closed_during_ack(fam: Family, kernel: Kernel) -> Result<()> {
    held_ack_while_closing(fam, kernel, false)
}

/// [`closed_during_ack`] with a migrate program choosing L1 and the sysctl
/// off: the program runs for the late migration and must see it as a
/// request migrated at its final ACK (a non-zero `len`), not as the
/// SYN+ACK timer's zero-length case.
pub fn closed_during_ack_bpf(fam: Family, kernel: Kernel) -> Result<()> {
    held_ack_while_closing(fam, kernel, true)
}

/// Checks that the client of a held handshake was reset, and says how: the
/// reset may beat connect() to the client's POLLOUT.
/// What became of a client whose connect() may have failed: its fate, or
/// "reset during connect".
fn client_fate(connected: Result<Client>) -> Result<String> {
    Ok(match connected {
        Ok(c) => fates(&[c], Deadline::after(event_timeout()))?.to_string(),
        Err(e) if is_reset(&e) => "reset during connect".into(),
        Err(e) => return Err(e),
    })
}

fn reset_client(ck: &mut Checks, connected: Result<Client>) -> Result<String> {
    let fate = client_fate(connected)?;
    let reset = fate == "reset during connect" || fate.contains(" reset=1 ");
    ck.eq(&format!("client reset ({fate})"), reset, true);
    Ok(fate)
}

fn held_ack_while_closing(fam: Family, kernel: Kernel, program: bool) -> Result<()> {
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    let steer = match program {
        false => {
            set_migrate_req(true)?;
            g.listen(0)?;
            None
        }
        true => {
            // Both listen, the program places the SYN on L0.
            set_migrate_req(false)?;
            let steer = steer_listen(&g)?;
            steer.place_syns(Some(0))?;
            steer.on_migrate(Migrate::To(1))?;
            Some(steer)
        }
    };
    let gate = Gate::attach(GateAt::Hashdance)?;
    gate.arm(g.port)?;
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;

    // The server side of the final ACK runs on the thread that sends it
    // (loopback), which the gate holds: connect from another thread, on
    // another CPU.
    let addr = g.addr();
    let connecting = on_other_cpu(move || Client::connect(fam, addr, 0))?;
    let connecting = held_or_report(gate.wait_holding(), connecting)?;
    if steer.is_none() {
        g.listen(1)?;
    }
    g.stop(0, Stop::Close)?;
    gate.release()?;
    let connected = join(connecting);

    match kernel {
        Kernel::Patched => served_by_l1(&g, &mut ck, connected?, "held ACK", true)?,
        Kernel::Base => {
            let fate = reset_client(&mut ck, connected)?;
            note(&format!("the client was reset ({fate})"));
            ck.eq("L1 queue after the held ACK", g.queued(1)?, 0);
        }
    }
    let ok = u((kernel == Kernel::Patched).into());
    let now = ck.reasons(kernel, &start, trace.as_ref(), "request", &[])?;
    ck.migrations("", &start, &now, ok, 0)?;
    if let Some(steer) = steer {
        let want = format!(
            "SynSelected=1 MigrateEstablished=0 MigrateSynRecv=0 MigrateReqAck={ok} \
             MigrateReqTimer=0 MigrateDropped=0 SelectError=0"
        );
        ck.eq("program counters", steer_stats(&steer)?, want);
    }
    ck.finish()
}

/// The final ACK of a handshake finds L0 listening, then waits (the
/// dead-child gate) until close() has orphaned L0, SOCK_DEAD set, but not
/// yet released its port; the child is created from L0 in that state and,
/// L0 closed, migrated late to L1. The series clears SOCK_DEAD on the
/// child: L1's accept() must return a live socket, one whose data wakes up
/// a reader. Upstream forgets the child and resets the client.
pub fn child_of_orphaned_listener(fam: Family, kernel: Kernel) -> Result<()> {
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let gate = DeadChildGate::attach()?;
    gate.arm(g.port)?;
    let start = TcpExt::read()?;

    let addr = g.addr();
    let connecting = on_other_cpu(move || Client::connect(fam, addr, 0))?;
    let connecting = held_or_report(gate.wait_stage(CHAIN_ACK_HELD), connecting)?;
    g.listen(1)?;
    // This close() waits in the gate until the ACK has made its child.
    g.stop(0, Stop::Close)?;
    gate.wait_stage(CHAIN_ACK_DONE)?;
    let connected = join(connecting);

    match kernel {
        Kernel::Patched => {
            let mut client = connected?;
            ck.eq("L1 queue after the held ACK", g.wait_queued(1, 1)?, 1);
            let acc = g.accept_all(1)?;
            ck.eq("accepted from L1", count_on(&acc, 1), 1);
            let waited = data_wakes_reader(&acc[0], &mut client)?;
            ck.eq(
                &format!("reader woken by the hello (after {waited:?})"),
                waited < scaled(WAKE_LIMIT) / 2,
                true,
            );
            exchange(&[client], &acc)?.check_all_served(&mut ck, 1);
            note(&format!(
                "the child went to L1, alive (reader woken after {waited:?})"
            ));
        }
        Kernel::Base => {
            reset_client(&mut ck, connected)?;
            ck.eq("L1 queue after the held ACK", g.queued(1)?, 0);
        }
    }
    let now = TcpExt::read()?;
    ck.migrations("", &start, &now, u((kernel == Kernel::Patched).into()), 0)?;
    ck.finish()
}

/// How long a reader of a dead child may wait for a wakeup that never comes.
const WAKE_LIMIT: Duration = Duration::from_secs(4);

/// A thread of this process blocks in poll() for data on `a`; then the
/// client sends its hello. Returns how long the poll() waited: a socket
/// marked SOCK_DEAD skips its data wakeups, so its reader wakes only at the
/// end of WAKE_LIMIT, whereas a live one is woken by the data.
fn data_wakes_reader(a: &Accepted, client: &mut Client) -> Result<Duration> {
    let fd = a.sock.as_raw_fd();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || -> Result<Duration> {
        // SAFETY: no requirement.
        tx.send(unsafe { libc::gettid() }).ok();
        let t = std::time::Instant::now();
        poll_fd(fd, libc::POLLIN, Deadline::after(scaled(WAKE_LIMIT)))?;
        Ok(t.elapsed())
    });
    let tid = rx.recv().context("reader thread")?;
    let syscall = format!("/proc/self/task/{tid}/syscall");
    // The poll() must be waiting before the data comes, or it would see the
    // data without a wakeup. 7 and 271 are poll and ppoll on x86_64.
    let blocked = wait_until(event_timeout(), || {
        let s = std::fs::read_to_string(&syscall).unwrap_or_default();
        Ok(s.starts_with("7 ") || s.starts_with("271 "))
    })?;
    if !blocked {
        return Err(anyhow!("the reader never blocked in poll() ({syscall})"));
    }
    client.send_hello()?;
    reader
        .join()
        .map_err(|_| anyhow!("reader thread panicked"))?
}

/// A handshake completes on L0 while close() is between setting L0's
/// SHUTDOWN_MASK and taking it out of TCP_LISTEN (the close gate holds it
/// there): the child is created from L0, queued on it, and migrated to L1
/// when the close goes on. The series clears the shutdown flags the child
/// would inherit from its closing listener, and the client is served;
/// upstream hands L1 a child born shut down, which cannot answer.
pub fn child_of_closing_listener(fam: Family, kernel: Kernel) -> Result<()> {
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let gate = Gate::attach(GateAt::Close)?;
    gate.arm(g.port)?;
    let start = TcpExt::read()?;

    // Handshakes to a listener take no socket lock: one completes while the
    // gate holds L0's close().
    let closing = close_on_other_cpu(&mut g, 0)?;
    gate.wait_holding()?;
    let mut client = Client::connect(fam, g.addr(), 0)?;
    client.send_hello()?;
    g.listen(1)?;
    gate.release()?;
    join(closing)?;

    ck.eq("L1 queue after the close", g.wait_queued(1, 1)?, 1);
    let now = TcpExt::read()?;
    ck.migrations("", &start, &now, 1, 0)?;
    ck.gate("close")?;
    let acc = g.accept_all(1)?;
    let ex = exchange(&[client], &acc)?;
    match kernel {
        Kernel::Patched => ex.check_all_served(&mut ck, 1),
        Kernel::Base => {
            ck.eq("clients served by L1", ex.alive, 0);
            note(&format!(
                "L1 accepted the child and could not answer (hello read: {})",
                ex.hello_ok
            ));
        }
    }
    ck.finish()
}

/// The one client of a test whose migration target closed in the window was
/// reset, and its `kind` of socket counted one TargetClosed failure.
fn target_closed_reset(
    ck: &mut Checks,
    kernel: Kernel,
    start: &TcpExt,
    trace: Option<&crate::harness::Trace>,
    clients: &[Client],
    kind: &str,
) -> Result<()> {
    ck.eq(
        "client fate",
        fates(clients, Deadline::after(event_timeout()))?.to_string(),
        "data=0 reset=1 eof=0 silent=0 error=0".to_string(),
    );
    ck.all_failed(kernel, start, trace, kind, Reason::TargetClosed, 1)?;
    Ok(())
}

/// A request of the closed L0 migrates to L1 when its final ACK arrives,
/// the child is created for L1, and L1 closes before the child is queued
/// on it. No listener is left, so both kernels reset the client. Upstream
/// counts one failure; the series says why, and counts its second attempt,
/// asking L1's group for another listener, as a failure with no listener.
pub fn target_closed_during_ack(fam: Family, kernel: Kernel) -> Result<()> {
    target_closes_during_ack(fam, kernel, false)
}

/// As [`target_closed_during_ack`], but a third listener, L2, listens by
/// the time the target L1 closes: the series asks L1's group again and L2
/// serves the client (one TargetClosed failure, then one success);
/// upstream resets it.
pub fn target_closed_during_ack_third(fam: Family, kernel: Kernel) -> Result<()> {
    target_closes_during_ack(fam, kernel, true)
}

fn target_closes_during_ack(fam: Family, kernel: Kernel, third: bool) -> Result<()> {
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, if third { 3 } else { 2 })?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let (hold, clients) = held_handshakes(fam, &g, 1)?;
    let mut client = clients.into_iter().next().context("one client")?;
    g.listen(1)?;
    let gate = Gate::attach(GateAt::Hashdance)?;
    gate.arm(g.port)?;
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;

    g.stop(0, Stop::Close)?;
    hold.release()?;
    let sending = on_other_cpu(move || client.send_hello().map(|()| client))?;
    gate.wait_holding()?;
    // The held child's target is L1, the only listener when its ACK came.
    if third {
        g.listen(2)?;
    }
    g.stop(1, Stop::Close)?;
    gate.release()?;
    let clients = [join(sending)?];
    match (kernel, third) {
        (Kernel::Base, _) => {
            target_closed_reset(&mut ck, kernel, &start, trace.as_ref(), &clients, "request")?
        }
        (Kernel::Patched, true) => {
            ck.eq("L2 queue after the held ACK", g.wait_queued(2, 1)?, 1);
            let acc = g.accept_all(1)?;
            ck.eq("accepted from L2", count_on(&acc, 2), 1);
            exchange(&clients, &acc)?.check_all_served(&mut ck, 1);
            let now = ck.reasons(
                kernel,
                &start,
                trace.as_ref(),
                "request",
                &[(Reason::TargetClosed, 1)],
            )?;
            ck.migrations("", &start, &now, 1, 1)?;
            note("L1 closed under the child, L2 took it");
        }
        (Kernel::Patched, false) => {
            ck.eq(
                "client fate",
                fates(&clients, Deadline::after(event_timeout()))?.to_string(),
                "data=0 reset=1 eof=0 silent=0 error=0".to_string(),
            );
            let now = ck.reasons(
                kernel,
                &start,
                trace.as_ref(),
                "request",
                &[(Reason::TargetClosed, 1), (Reason::NoListener, 1)],
            )?;
            ck.migrations("", &start, &now, 0, 2)?;
        }
    }
    ck.finish()
}

/// L0 closes with a child queued, and the migrate gate holds the close
/// once reuseport_migrate_sock() has chosen L1 and taken a reference on
/// it; L1 closes in that window. The child cannot be queued on L1 and no
/// listener is left: both kernels reset the client and count one failure;
/// the series says why.
pub fn target_closed_during_close(fam: Family, kernel: Kernel) -> Result<()> {
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    let clients = children_on_l0(fam, &g, &mut ck, 1)?;
    g.listen(1)?;
    let gate = Gate::attach(GateAt::Migrated)?;
    gate.arm(g.port)?;
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;

    let closing = close_on_other_cpu(&mut g, 0)?;
    gate.wait_holding()?;
    g.stop(1, Stop::Close)?;
    gate.release()?;
    join(closing)?;
    target_closed_reset(&mut ck, kernel, &start, trace.as_ref(), &clients, "child")?;
    ck.finish()
}

/// Handshakes in flight when L0 closes, then tcp_migrate_req is set to 0
/// before their final ACKs arrive: the requests find migration disabled
/// (counted as such) and the clients are reset by L1, which has no request
/// for them.
pub fn disabled_after_close(fam: Family, kernel: Kernel) -> Result<()> {
    const N: usize = 2;
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let (hold, mut clients) = held_handshakes(fam, &g, N)?;
    g.listen(1)?;
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;

    g.stop(0, Stop::Close)?;
    set_migrate_req(false)?;
    hold.release()?;
    for c in &mut clients {
        c.send_hello()?;
    }
    expect_all_reset(&mut ck, &g, &clients, 1)?;
    ck.all_failed(
        kernel,
        &start,
        trace.as_ref(),
        "request",
        Reason::Disabled,
        u(N),
    )?;
    ck.finish()
}

/// With tcp_synack_retries=0 the SYN+ACK timer of a request of the closed
/// L0 migrates it to L1 and finds no retransmission left: the request
/// expires during its migration. (The timer reads the sysctl when it fires,
/// so setting it after the close cannot expire a request still on L0.)
pub fn expired_in_migration(fam: Family, kernel: Kernel) -> Result<()> {
    const N: usize = 2;
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    g.listen(0)?;
    let (_hold, _clients) = held_handshakes(fam, &g, N)?;
    g.listen(1)?;
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;

    g.stop(0, Stop::Close)?;
    set_sysctl("net.ipv4.tcp_synack_retries", "0")?;
    wait_until(scaled(SYNACK_RTX_TIMEOUT), || {
        Ok(TcpExt::read()?.since(&start, MIGRATE_FAIL)? >= u(N))
    })?;
    ck.all_failed(
        kernel,
        &start,
        trace.as_ref(),
        "request",
        Reason::Expired,
        u(N),
    )?;
    ck.eq("L1 queue", g.queued(1)?, 0);
    ck.finish()
}

/// The migrate program sends A's in-flight requests to B, whose accept
/// queue is full: each final ACK fails on B's full queue (counted once per
/// arriving ACK, retransmissions included).
pub fn bpf_to_full_target(fam: Family, kernel: Kernel) -> Result<()> {
    const N: usize = 2;
    set_migrate_req(true)?;
    let mut ck = Checks::new();
    let mut s = Stalled::setup(fam, &mut ck)?;
    ck.gate("setup")?;
    let (hold, mut clients) = held_handshakes(fam, &s.g, N)?;
    s.steer.on_migrate(Migrate::To(B as u32))?;
    let trace = start_trace(kernel, s.g.port)?;
    let start = TcpExt::read()?;

    s.g.stop(A, Stop::Close)?;
    hold.release()?;
    for c in &mut clients {
        c.send_hello()?;
    }
    wait_until(event_timeout(), || {
        Ok(TcpExt::read()?.since(&start, MIGRATE_FAIL)? >= u(N))
    })?;
    let now = ck.reasons(
        kernel,
        &start,
        trace.as_ref(),
        "request",
        &[(Reason::QueueFull, ALL_FAILURES)],
    )?;
    ck.ge(
        "TCPMigrateReqFailure",
        now.since(&start, MIGRATE_FAIL)?,
        u(N),
    );
    ck.ge(
        "ListenOverflows",
        now.since(&start, LISTEN_OVERFLOWS)?,
        u(N),
    );
    ck.eq("B queue (unchanged)", s.g.queued(B)?, B_FULL);
    ck.eq("C queue", s.g.queued(C)?, 0);
    ck.finish()
}

// ---------------------------------------------------------------------------
// Load-aware target choice (tcp_migrate_req=2): what the series adds.
//
// Upstream picks the target of a migration by the migrating socket's hash
// alone, also when that listener is stalled with a full accept queue while
// another one has room. With tcp_migrate_req=2 the patched kernel never
// picks a full queue while a live listener has room. On the base kernel
// these tests assert upstream's loss instead, and that 2 is refused.

/// Roles in a group of three listeners on one port.
const A: usize = 0; // holds the connections, then closes
const B: usize = 1; // stalled: never accepts, accept queue full
const C: usize = 2; // serves, plenty of room

/// B's listen() backlog. sk_acceptq_is_full() is `sk_ack_backlog >
/// sk_max_ack_backlog`, so B is full once it holds STALLED_BACKLOG + 1.
const STALLED_BACKLOG: i32 = 2;
const B_FULL: u32 = STALLED_BACKLOG as u32 + 1;

/// Connections that leave A. Upstream chooses between B and C by each
/// connection's hash, so with K = 16 the base-kernel assertion "at least
/// one lands on B" fails by chance with probability 2^-16 per run.
const K: usize = 16;

/// Client ids (their hellos) of B's stalled connections, apart from 0..K.
const STALLED_IDS: Range<usize> = 100..100 + B_FULL as usize;

/// What one write(2) to the sysctl answered: "ok", "EINVAL" or the error.
fn write_outcome(name: &str, value: &str) -> String {
    match write_sysctl(name, value) {
        Ok(()) => "ok".into(),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => "EINVAL".into(),
        Err(e) => e.to_string(),
    }
}

/// Writes `value` to tcp_migrate_req, checks the answer is `want` ("ok" or
/// "EINVAL") and that the sysctl then holds `value`, or still `old` if the
/// write was refused. Returns what it holds.
fn try_migrate_req(ck: &mut Checks, old: &str, value: &str, want: &str) -> Result<String> {
    ck.eq(
        &format!("writing {value:?} over {old}"),
        write_outcome(MIGRATE_REQ, value).as_str(),
        want,
    );
    let now = read_sysctl(MIGRATE_REQ)?;
    let expect = if want == "ok" { value } else { old };
    ck.eq(
        &format!("tcp_migrate_req after writing {value:?} over {old}"),
        now.as_str(),
        expect,
    );
    Ok(now)
}

/// The mode under test: 2 on the patched kernel (the write must succeed);
/// on the base kernel 2 must be refused with EINVAL, and upstream's 1 runs.
fn migrate_req_under_test(ck: &mut Checks, kernel: Kernel) -> Result<()> {
    let old = read_sysctl(MIGRATE_REQ)?;
    match kernel {
        Kernel::Patched => {
            try_migrate_req(ck, &old, "2", "ok")?;
        }
        Kernel::Base => {
            try_migrate_req(ck, &old, "2", "EINVAL")?;
            try_migrate_req(ck, &old, "1", "ok")?;
        }
    }
    ck.gate(&format!("tcp_migrate_req on the {} kernel", kernel.name()))
}

/// The three listeners of the stalled-target tests, with the steer program
/// attached and SYNs placed on A; B already holds B_FULL connections from
/// `stalled` clients (kept open, never served).
struct Stalled {
    g: Group,
    steer: Steer,
    _stalled: Vec<Client>,
}

impl Stalled {
    fn setup(fam: Family, ck: &mut Checks) -> Result<Stalled> {
        let mut g = Group::bind(fam, 3)?;
        g.set_backlog(B, STALLED_BACKLOG);
        let steer = steer_listen(&g)?;
        steer.place_syns(Some(B as u32))?;
        let stalled = STALLED_IDS
            .map(|id| Client::connect(fam, g.addr(), id))
            .collect::<Result<Vec<_>>>()?;
        ck.eq(
            "B queue (full: backlog + 1)",
            g.wait_queued(B, B_FULL)?,
            B_FULL,
        );
        steer.place_syns(Some(A as u32))?;
        Ok(Stalled {
            g,
            steer,
            _stalled: stalled,
        })
    }

    /// Detaches the program and closes A: from here on the sysctl alone
    /// chooses where A's connections go.
    fn close_a(&mut self) -> Result<()> {
        self.steer.detach(self.g.sock(A)?)?;
        self.g.stop(A, Stop::Close)
    }
}

/// Splits `clients` into those an accepted socket belongs to and the rest.
fn served_split(clients: Vec<Client>, acc: &[Accepted]) -> (Vec<Client>, Vec<Client>) {
    clients
        .into_iter()
        .partition(|c| acc.iter().any(|a| a.peer_port == c.port))
}

/// Accepts `want` connections from C only (B is stalled) and talks over
/// each: every served client gets its reply. Returns the clients no
/// accepted socket belongs to.
fn serve_from_c(
    ck: &mut Checks,
    g: &Group,
    clients: Vec<Client>,
    want: usize,
) -> Result<Vec<Client>> {
    let acc = g.accept_from(&[C], want)?;
    ck.eq("accepted from C", acc.len(), want);
    let (served, unserved) = served_split(clients, &acc);
    let ex = exchange(&served, &acc)?;
    ex.check_served(ck, want);
    Ok(unserved)
}

/// Children queued on A move when A closes. Upstream (1) queues about half
/// of them on the stalled B, whose queue is full: the close path does not
/// look at the target's backlog, B's queue grows past it and those
/// connections are never served, although C had room. With 2 all K go to
/// C.
pub fn stalled_target_children(fam: Family, kernel: Kernel) -> Result<()> {
    let mut ck = Checks::new();
    migrate_req_under_test(&mut ck, kernel)?;
    let mut s = Stalled::setup(fam, &mut ck)?;
    let clients = connect_greet(fam, &s.g, 0..K)?;
    ck.eq(
        "A queue after connects",
        s.g.wait_queued(A, K as u32)?,
        K as u32,
    );
    ck.eq("C queue before close", s.g.queued(C)?, 0);
    ck.gate("setup")?;

    let start = TcpExt::read()?;
    s.close_a()?;
    let now = TcpExt::read()?;
    let (on_b, on_c) = (s.g.queued(B)?.saturating_sub(B_FULL), s.g.queued(C)?);
    note(&format!(
        "A's {K} children: {on_b} onto the stalled B (never served), {on_c} onto C"
    ));
    ck.migrations("", &start, &now, u(K), 0)?;
    // Queueing a migrated child never counts an overflow, full queue or not.
    ck.eq("ListenOverflows", now.since(&start, LISTEN_OVERFLOWS)?, 0);
    match kernel {
        Kernel::Patched => {
            ck.eq("B queue after close (unchanged)", s.g.queued(B)?, B_FULL);
            ck.eq("C queue after close", on_c, K as u32);
        }
        Kernel::Base => {
            // Fails by chance with probability 2^-K (see K).
            ck.ge("children moved onto the full B", on_b, 1);
            ck.eq("children on B + on C", on_b + on_c, K as u32);
        }
    }
    ck.gate("close")?;

    let unserved = serve_from_c(&mut ck, &s.g, clients, on_c as usize)?;
    // Those on B wait in its queue: connected, not reset, never answered.
    ck.eq("clients left on B", u(unserved.len()), on_b.into());
    ck.eq(
        "fates of the clients left on B",
        fates(&unserved, Deadline::after(Duration::ZERO))?.to_string(),
        format!("data=0 reset=0 eof=0 silent={on_b} error=0"),
    );
    let end = TcpExt::read()?;
    ck.migrations("at end", &start, &end, u(K), 0)?;
    ck.finish()
}

/// K handshakes on A wait for their final ACK when A closes; each is moved
/// when its ACK (with the client's first data) arrives. Upstream (1) moves
/// the request to the hashed listener; when that is the full B, the child
/// cannot be created: a listen overflow, counted as a migration failure,
/// and the client's data is dropped, although C had room. With 2 all K land
/// on C.
///
/// Kernel facts (checked on 6.18), asserted on base: when the target is
/// full, tcp_v4/v6_syn_recv_sock() counts ListenOverflows and ListenDrops,
/// and tcp_check_req() TCPMigrateReqFailure, once per segment that hits the
/// request (the client retransmits its data, so possibly more than once).
/// No child is created: B's queue does not move.
pub fn stalled_target_reqsk_ack(fam: Family, kernel: Kernel) -> Result<()> {
    let mut ck = Checks::new();
    migrate_req_under_test(&mut ck, kernel)?;
    let mut s = Stalled::setup(fam, &mut ck)?;
    ck.gate("setup")?;
    let hold = HoldAck::attach(s.g.port)?;
    let start = TcpExt::read()?;

    let mut clients = (0..K)
        .map(|id| Client::connect(fam, s.g.addr(), id))
        .collect::<Result<Vec<_>>>()?;
    wait_until(event_timeout(), || Ok(hold.dropped()? >= u(K)))?;
    // more than K if a SYN+ACK was retransmitted (slow guest) and the
    // client's answer to it was held too
    ck.ge("final ACKs held back", hold.dropped()?, u(K));
    ck.eq("A queue while ACKs are held", s.g.queued(A)?, 0);
    ck.gate("handshakes held")?;

    s.close_a()?;
    let closed = TcpExt::read()?;
    ck.migrations("right after close", &start, &closed, 0, 0)?;
    ck.eq("C queue right after close", s.g.queued(C)?, 0);
    ck.gate("close")?;

    hold.release()?;
    for c in &mut clients {
        c.send_hello()?;
    }
    // Each hello either creates a child on the chosen listener or is
    // dropped and counted as a migration failure; wait until all K are one
    // or the other.
    wait_until(event_timeout(), || {
        let failed = TcpExt::read()?.since(&closed, MIGRATE_FAIL)?;
        Ok(u64::from(s.g.queued(C)?) + failed >= u(K))
    })?;
    let now = TcpExt::read()?;
    let on_c = s.g.queued(C)? as usize;
    let lost = K.saturating_sub(on_c);
    note(&format!(
        "A's {K} handshakes: {on_c} completed on C, {lost} lost on the full B"
    ));
    ck.eq(
        "TCPSynRetrans since close (the ACK path did the moves)",
        now.since(&closed, SYNACK_RETRANS)?,
        0,
    );
    ck.eq("B queue after the ACKs (unchanged)", s.g.queued(B)?, B_FULL);
    ck.eq(
        "TCPMigrateReqSuccess after the ACKs",
        now.since(&closed, MIGRATE_OK)?,
        u(on_c),
    );
    match kernel {
        Kernel::Patched => {
            ck.eq("C queue after the ACKs", on_c, K);
            ck.eq(
                "TCPMigrateReqFailure after the ACKs",
                now.since(&closed, MIGRATE_FAIL)?,
                0,
            );
            ck.eq(
                "ListenOverflows after the ACKs",
                now.since(&closed, LISTEN_OVERFLOWS)?,
                0,
            );
        }
        Kernel::Base => {
            // Fails by chance with probability 2^-K (see K).
            ck.ge("connections lost (not on C)", lost, 1);
            for counter in [MIGRATE_FAIL, LISTEN_OVERFLOWS, LISTEN_DROPS] {
                ck.ge(
                    &format!("{counter} after the ACKs"),
                    now.since(&closed, counter)?,
                    u(lost),
                );
            }
        }
    }
    ck.gate("ACKs")?;

    let unserved = serve_from_c(&mut ck, &s.g, clients, on_c)?;
    // The lost ones: their data was never acknowledged, nothing came back.
    ck.eq("clients not served", unserved.len(), lost);
    let mut unacked = 0;
    for c in &unserved {
        if c.unacked()? > 0 {
            unacked += 1;
        }
    }
    ck.eq(
        "clients not served whose data is unacknowledged",
        unacked,
        lost,
    );
    ck.eq(
        "fates of the clients not served",
        fates(&unserved, Deadline::after(Duration::ZERO))?.to_string(),
        format!("data=0 reset=0 eof=0 silent={lost} error=0"),
    );
    ck.finish()
}

/// tcp_migrate_req takes 0 and 1 on both kernels, 2 only on the patched
/// one; anything else is refused with EINVAL and leaves the value as it was.
pub fn sysctl_rejects_unknown(kernel: Kernel) -> Result<()> {
    let mut ck = Checks::new();
    let two = match kernel {
        Kernel::Patched => "ok",
        Kernel::Base => "EINVAL",
    };
    let mut old = read_sysctl(MIGRATE_REQ)?;
    for (value, want) in [("1", "ok"), ("0", "ok"), ("2", two), ("1", "ok")] {
        old = try_migrate_req(&mut ck, &old, value, want)?;
    }
    ck.gate("known values")?;

    let kept: &[&str] = match kernel {
        Kernel::Patched => &["0", "1", "2"],
        Kernel::Base => &["0", "1"],
    };
    for old in kept {
        set_sysctl(MIGRATE_REQ, old).context("set the value to keep")?;
        let mut bad = vec!["3", "255", "-1", "abc"];
        if kernel == Kernel::Base {
            bad.push("2");
        }
        for value in bad {
            try_migrate_req(&mut ck, old, value, "EINVAL")?;
        }
    }
    ck.finish()
}
