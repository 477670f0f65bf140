// SPDX-License-Identifier: GPL-2.0
//! Children already in the accept queue of a listener that closes or shuts
//! down: upstream's own migration, the baseline the series must keep.

use anyhow::{Context, Result};

use super::common::{children_on_l0, connect_greet, u};
use crate::harness::{
    count_on, exchange, pin_to_cpu, set_migrate_req, setsockopt_int, Checks, Family, Group, Stop,
    TcpExt,
};

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
