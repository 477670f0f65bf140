// SPDX-License-Identifier: GPL-2.0
//! A listener closing while a handshake completes on it: races only a BPF
//! gate can hold open, in which upstream loses or breaks the child.

use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::common::{
    client_fate, close_on_other_cpu, held_or_report, join, on_other_cpu, served_by_l1,
    steer_listen, steer_stats, u,
};
use crate::bpf::{DeadChildGate, Gate, GateAt, Migrate, CHAIN_ACK_DONE, CHAIN_ACK_HELD};
use crate::harness::{
    count_on, event_timeout, exchange, note, poll_fd, scaled, set_migrate_req, start_trace,
    wait_until, Accepted, Checks, Client, Deadline, Family, Group, Kernel, Stop, TcpExt,
};

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
