// SPDX-License-Identifier: GPL-2.0
//! A `sk_reuseport/migrate` program choosing the target or vetoing the
//! move: it overrides tcp_migrate_req both ways, so it is tested apart.

use anyhow::Result;

use super::common::{connect_greet, expect_all_reset, steer_stats, steered_group, u};
use crate::bpf::Migrate;
use crate::harness::{
    count_on, exchange, set_migrate_req, start_trace, Checks, Family, Kernel, Reason, Stop, TcpExt,
};

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
