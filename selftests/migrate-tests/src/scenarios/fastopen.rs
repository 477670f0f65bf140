// SPDX-License-Identifier: GPL-2.0
//! Fast Open children: full sockets still in SYN_RECV in the accept queue,
//! neither a request nor an established child, so a case of their own.

use anyhow::Result;

use super::common::{u, TFO_NO_COOKIES};
use crate::bpf::HoldAck;
use crate::harness::{
    count_on, event_timeout, exchange, set_migrate_req, set_sysctl, tcp_state, wait_until, Checks,
    Client, Family, Group, Stop, TcpExt, TCP_SYN_RECV, TFO_PASSIVE,
};

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
