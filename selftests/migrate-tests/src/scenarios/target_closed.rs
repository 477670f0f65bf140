// SPDX-License-Identifier: GPL-2.0
//! The chosen target closing before the migrated child is queued on it: the
//! race on the receiving side, with a failure reason of its own.

use anyhow::{Context, Result};

use super::common::{children_on_l0, close_on_other_cpu, held_handshakes, join, on_other_cpu};
use crate::bpf::{Gate, GateAt};
use crate::harness::{
    count_on, event_timeout, exchange, fates, note, set_migrate_req, start_trace, Checks, Client,
    Deadline, Family, Group, Kernel, Reason, Stop, TcpExt,
};

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
