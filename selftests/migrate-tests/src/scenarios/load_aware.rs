// SPDX-License-Identifier: GPL-2.0
//! Load-aware target choice (tcp_migrate_req=2): what the series adds.
//!
//! Upstream picks the target of a migration by the migrating socket's hash
//! alone, also when that listener is stalled with a full accept queue while
//! another one has room. With tcp_migrate_req=2 the patched kernel never
//! picks a full queue while a live listener has room. On the base kernel
//! these tests assert upstream's loss instead, and that 2 is refused.

use std::ops::Range;
use std::time::Duration;

use anyhow::Result;

use super::common::{connect_greet, steer_listen, u};
use super::sysctl_abi::try_migrate_req;
use crate::bpf::{HoldAck, Steer};
use crate::harness::{
    event_timeout, exchange, fates, note, read_sysctl, wait_until, Accepted, Checks, Client,
    Deadline, Family, Group, Kernel, Stop, TcpExt, LISTEN_DROPS, LISTEN_OVERFLOWS, MIGRATE_FAIL,
    MIGRATE_OK, MIGRATE_REQ, SYNACK_RETRANS,
};

/// Roles in a group of three listeners on one port.
pub(super) const A: usize = 0; // holds the connections, then closes
pub(super) const B: usize = 1; // stalled: never accepts, accept queue full
pub(super) const C: usize = 2; // serves, plenty of room

/// B's listen() backlog. sk_acceptq_is_full() is `sk_ack_backlog >
/// sk_max_ack_backlog`, so B is full once it holds STALLED_BACKLOG + 1.
const STALLED_BACKLOG: i32 = 2;
pub(super) const B_FULL: u32 = STALLED_BACKLOG as u32 + 1;

/// Connections that leave A. Upstream chooses between B and C by each
/// connection's hash, so with K = 16 the base-kernel assertion "at least
/// one lands on B" fails by chance with probability 2^-16 per run.
const K: usize = 16;

/// Client ids (their hellos) of B's stalled connections, apart from 0..K.
const STALLED_IDS: Range<usize> = 100..100 + B_FULL as usize;

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
pub(super) struct Stalled {
    pub(super) g: Group,
    pub(super) steer: Steer,
    _stalled: Vec<Client>,
}

impl Stalled {
    pub(super) fn setup(fam: Family, ck: &mut Checks) -> Result<Stalled> {
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
