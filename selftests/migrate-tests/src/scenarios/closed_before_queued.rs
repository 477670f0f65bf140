// SPDX-License-Identifier: GPL-2.0
//! A Fast Open child (made when its SYN arrives) and a syncookie child
//! (made when a cookie ACK arrives) are queued by
//! inet_csk_reqsk_queue_add() on a listener that tcp_v4_rcv() and
//! tcp_v6_rcv() checked without its lock. The gate holds that call while
//! the listener closes and its replacement starts listening:
//! inet_csk_listen_stop() has run and never saw the child. The series
//! hands the child to the replacement, data included; upstream resets it.
//!
//! A syncookie request holds no reference on its listener: close() would
//! let the listener leave its group before the held ACK goes on, and the
//! child could not migrate (a limit the series documents). The syncookie
//! case shuts the listener down instead, which keeps it in the group.

use anyhow::Result;

use super::common::{
    client_fate, held_or_report, join, on_other_cpu, served_by_l1, TFO_NO_COOKIES,
};
use crate::bpf::{Gate, GateAt};
use crate::harness::{
    note, set_migrate_req, set_sysctl, start_trace, Checks, Client, Family, Group, Kernel, Stop,
    TcpExt, TFO_PASSIVE,
};

/// How the child is made before it is queued.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// tcp_conn_request(): the SYN carries the hello.
    FastOpen,
    /// tcp_get_cookie_sock(): tcp_syncookies=2 answers every SYN with a
    /// cookie, the child is made when the ACK brings it back.
    Syncookie,
}

impl Path {
    /// What the tracepoint calls the migrating socket.
    fn kind(self) -> &'static str {
        match self {
            Path::FastOpen => "tfo",
            Path::Syncookie => "child",
        }
    }

    /// How the test stops the listener while the child is held.
    fn stop(self) -> Stop {
        match self {
            Path::FastOpen => Stop::Close,
            Path::Syncookie => Stop::Shutdown,
        }
    }

    /// The TcpExt counter that proves the path was taken.
    fn counter(self) -> &'static str {
        match self {
            Path::FastOpen => TFO_PASSIVE,
            Path::Syncookie => "SyncookiesRecv",
        }
    }
}

pub fn closed_before_queued(fam: Family, kernel: Kernel, path: Path) -> Result<()> {
    set_migrate_req(true)?;
    let mut g = Group::bind(fam, 2)?;
    let mut ck = Checks::new();
    match path {
        Path::FastOpen => {
            set_sysctl("net.ipv4.tcp_fastopen", TFO_NO_COOKIES)?;
            g.enable_fastopen(64)?;
        }
        Path::Syncookie => set_sysctl("net.ipv4.tcp_syncookies", "2")?,
    }
    g.listen(0)?;
    let gate = Gate::attach(GateAt::QueueAdd)?;
    gate.arm(g.port)?;
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;

    // Loopback runs the server side of the SYN (Fast Open) or of the ACK
    // (syncookie) on the sending thread, which the gate holds: send from
    // another thread, on another CPU.
    let addr = g.addr();
    let connecting = on_other_cpu(move || match path {
        Path::FastOpen => Client::connect_fastopen(fam, addr, 0),
        Path::Syncookie => Client::connect(fam, addr, 0),
    })?;
    let connecting = held_or_report(gate.wait_holding(), connecting)?;
    g.listen(1)?;
    g.stop(0, path.stop())?;
    gate.release()?;
    let connected = join(connecting);

    ck.eq(
        path.counter(),
        TcpExt::read()?.since(&start, path.counter())?,
        1,
    );
    match kernel {
        // The Fast Open hello came with the SYN.
        Kernel::Patched => served_by_l1(
            &g,
            &mut ck,
            connected?,
            "held child",
            path == Path::Syncookie,
        )?,
        Kernel::Base => {
            // Checked first: a syncookie client that outlives its child
            // is not reset by every kernel, and its FIN still carries a
            // valid cookie, which L1 would turn into a child of its own.
            ck.eq("L1 queue after the held child", g.queued(1)?, 0);
            let fate = lost_client(&mut ck, connected)?;
            note(&format!("the connection was lost ({fate})"));
        }
    }
    let ok = u64::from(kernel == Kernel::Patched);
    let now = ck.reasons(kernel, &start, trace.as_ref(), path.kind(), &[])?;
    ck.migrations("", &start, &now, ok, 0)?;
    ck.finish()
}

/// The server forgot the child: the client is reset, or hears nothing.
fn lost_client(ck: &mut Checks, connected: Result<Client>) -> Result<String> {
    let fate = client_fate(connected)?;
    let lost =
        fate == "reset during connect" || fate.contains(" reset=1 ") || fate.contains(" silent=1 ");
    ck.eq(&format!("client lost ({fate})"), lost, true);
    Ok(fate)
}
