// SPDX-License-Identifier: GPL-2.0
//! Requests still in the handshake when their listener closes: no accept
//! queue holds them, so they move later, on paths of their own.

use anyhow::Result;

use super::common::{u, SYNACK_RTX_TIMEOUT};
use crate::bpf::HoldAck;
use crate::harness::{
    count_on, event_timeout, exchange, scaled, set_migrate_req, wait_until, Checks, Client, Family,
    Group, Stop, TcpExt, MIGRATE_OK, SYNACK_RETRANS,
};

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
