// SPDX-License-Identifier: GPL-2.0
//! Everything around the traffic that changes while it runs: the migration
//! sysctl and syncookies flip, a migrate program is attached, replaced and
//! detached, final ACKs are held so that SYN+ACK timers fire, the parking
//! grace flips, and whole network namespaces holding live, migrating and
//! parked connections are torn down.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use migrate_tests::bpf::{HoldAck, Migrate, Steer};
use migrate_tests::harness::{
    enter_fresh_netns, poll_fd, read_sysctl, scaled, set_sysctl, write_sysctl, Deadline, Family,
    MIGRATE_REQ,
};

use crate::listeners::{tcp_socket, Pool};
use crate::stats::{Stats, Stop};

/// Fast Open for clients and servers without cookies (0x1 | 0x2 | 0x4 |
/// 0x200), so every Fast Open SYN makes a child at once.
pub const TFO_NO_COOKIES: &str = "519";

/// How long final ACKs are held: past the first SYN+ACK timer, which fires
/// after 1 s of real time on any kernel, so this is not scaled. Every ACK
/// to the port is dropped meanwhile, the clients' data segments too: a
/// 30-minute campaign with a hold scaled to 15 s and one operation in ten
/// a hold kept ACKs dropped for over half of the run, and clients whose
/// request went unacknowledged through seven retransmissions were counted
/// as hung.
const HOLD: Duration = Duration::from_millis(1500);

/// At least this long between two holds, whatever the chaos thread's pace:
/// a client must be able to get its data through between them. Without a
/// gap, holds chosen one time in twenty still covered two thirds of a
/// 20 s run on the plain kernel, and a Fast Open client whose data went
/// unacknowledged through five retransmissions timed out.
const HOLD_GAP: Duration = Duration::from_millis(7500);

/// The parking grace (stop-then-start) of the patched kernel; the base
/// kernel has none, and then the stress never parks.
pub const PARK_GRACE: &str = "net.ipv4.tcp_migrate_req_grace_ms";

/// Whether this kernel can park a closed last listener.
pub fn can_park() -> bool {
    read_sysctl(PARK_GRACE).is_ok()
}

/// The graces the chaos thread flips among, in ms: off, shorter than a
/// churn step (parks that expire), and long enough to be adopted.
const PARK_GRACES: &[u32] = &[0, 300, 1500];

/// The chaos thread: one random operation after another until the run
/// stops. `modes` are the tcp_migrate_req values the kernel accepts.
pub fn chaos(pools: &[Arc<Pool>], modes: &[u8], seed: u64, stop: &Stop, stats: &Stats) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut last_hold: Option<std::time::Instant> = None;
    // The program each group has now (one per address family).
    let mut steer: Vec<Option<Steer>> = pools.iter().map(|_| None).collect();
    while !stop.is_set() {
        let roll = rng.u32(..100);
        let r = match roll {
            0..=24 => {
                let v = modes[rng.usize(..modes.len())];
                write_sysctl(MIGRATE_REQ, &v.to_string())
                    .map(|()| stats.bump(&format!("op/tcp_migrate_req={v}")))
                    .map_err(|e| anyhow!(e).context("write tcp_migrate_req"))
            }
            25..=34 => {
                let v = if rng.bool() { "1" } else { "2" };
                write_sysctl("net.ipv4.tcp_syncookies", v)
                    .map(|()| stats.bump(&format!("op/tcp_syncookies={v}")))
                    .map_err(|e| anyhow!(e).context("write tcp_syncookies"))
            }
            35..=64 => {
                let k = rng.usize(..pools.len());
                program(&pools[k], &mut steer[k], &mut rng, stats)
            }
            65..=69 if last_hold.is_none_or(|t| t.elapsed() >= HOLD_GAP) => {
                let r = hold_acks(pools, stats);
                last_hold = Some(std::time::Instant::now());
                r
            }
            70..=84 => netns_teardown(stats),
            // The last listener of a group that closes parks, and the
            // next one to listen adopts what it kept, or the grace ends.
            85..=92 if can_park() => {
                let v = PARK_GRACES[rng.usize(..PARK_GRACES.len())];
                write_sysctl(PARK_GRACE, &v.to_string())
                    .map(|()| stats.bump(&format!("op/park_grace_ms={v}")))
                    .map_err(|e| anyhow!(e).context("write tcp_migrate_req_grace_ms"))
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            stats.error("chaos/failed", &e);
        }
        thread::sleep(scaled(Duration::from_millis(rng.u64(10..60))));
    }
    // The programs are detached at the end, so that the last migrations
    // see the sysctl alone.
    for (pool, s) in pools.iter().zip(&steer) {
        if let (Some(s), Some(l)) = (s, pool.listening().first()) {
            let _ = s.detach(l);
        }
    }
}

/// Attaches a migrate program to a group with none, or replaces or
/// detaches the one it has. What the program answers for a migrating
/// socket is chosen at random: the kernel's pick, SK_DROP, or slot 0 of
/// its socket array (a listener of the group, or nobody).
fn program(
    pool: &Pool,
    steer: &mut Option<Steer>,
    rng: &mut fastrand::Rng,
    stats: &Stats,
) -> Result<()> {
    let ls = pool.listening();
    let Some(l) = ls.get(rng.usize(..ls.len().max(1))) else {
        stats.bump("op/bpf_no_listener");
        return Ok(());
    };
    if steer.is_some() && rng.bool() {
        steer
            .as_ref()
            .expect("checked")
            .detach(l)
            .context("detach")?;
        *steer = None;
        stats.bump("op/bpf_detach");
        return Ok(());
    }
    let s = Steer::load()?;
    match rng.u32(..3) {
        0 => s.on_migrate(Migrate::To(u32::MAX))?,
        1 => s.on_migrate(Migrate::Drop)?,
        _ => {
            s.set_slot(0, l)?;
            s.on_migrate(Migrate::To(0))?;
        }
    }
    s.attach(l).context("attach")?;
    stats.bump(if steer.is_some() {
        "op/bpf_replace"
    } else {
        "op/bpf_attach"
    });
    *steer = Some(s);
    Ok(())
}

/// Drops every final ACK (and later ACK) to the groups' port for a while:
/// handshakes stay half open on the server and SYN+ACK timers fire, on
/// requests whose listener may close meanwhile.
fn hold_acks(pools: &[Arc<Pool>], stats: &Stats) -> Result<()> {
    let hold = HoldAck::attach(pools[0].port)?;
    thread::sleep(HOLD);
    hold.release()?;
    stats.add("op/acks_held", hold.dropped()?);
    stats.bump("op/hold_acks");
    Ok(())
}

/// A network namespace with two listeners, queued children, handshakes and
/// data in flight, and a migration when one listener closes, is dropped
/// with all of that in it. On a kernel that parks, the last listener is
/// parked with its children when the namespace's last process leaves:
/// the namespace goes once the grace ends and the park expires.
fn netns_teardown(stats: &Stats) -> Result<()> {
    let r = thread::spawn(|| -> Result<()> {
        enter_fresh_netns()?;
        set_sysctl(MIGRATE_REQ, "1")?;
        if can_park() {
            set_sysctl(PARK_GRACE, "1000")?;
        }
        set_sysctl("net.ipv4.tcp_fastopen", TFO_NO_COOKIES)?;
        let pool = Pool::new(Family::V4, 0, 2)?;
        let mut clients = Vec::new();
        for k in 0..6 {
            let s = tcp_socket(Family::V4)?;
            match s.connect(&pool.addr().into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e).context("connect"),
            }
            if k % 2 == 0
                && poll_fd(
                    s.as_raw_fd(),
                    libc::POLLOUT,
                    Deadline::after(scaled(Duration::from_millis(200))),
                )?
            {
                let _ = (&s).write(b"data before accept\n");
            }
            if k % 3 == 0 {
                let _ = s.set_linger(Some(Duration::ZERO));
            }
            clients.push(s);
        }
        pool.close_slot(0);
        // The last listener closes (parks) while its children are alive.
        drop(pool);
        drop(clients);
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("netns teardown thread panicked"))?;
    r?;
    stats.bump("op/netns_teardown");
    Ok(())
}
