// SPDX-License-Identifier: GPL-2.0
//! Migrations that cannot happen or that fail: the clients are reset, and
//! the failure counters (per reason, on the patched kernel) must say why.

use anyhow::Result;

use super::common::{children_on_l0, expect_all_reset, held_handshakes, u, SYNACK_RTX_TIMEOUT};
use super::load_aware::{Stalled, A, B, B_FULL, C};
use crate::bpf::Migrate;
use crate::harness::{
    event_timeout, scaled, set_migrate_req, set_sysctl, start_trace, wait_until, Checks, Family,
    Group, Kernel, Reason, Stop, TcpExt, ALL_FAILURES, LISTEN_OVERFLOWS, MIGRATE_FAIL,
};

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
