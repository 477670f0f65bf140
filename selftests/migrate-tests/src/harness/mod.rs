// SPDX-License-Identifier: GPL-2.0
//! Shared pieces of the migration tests: a private network namespace per
//! test, per-namespace sysctls and TcpExt counters, a reuseport listener
//! group, loopback clients, and bounded waits.
//!
//! Every wait in here takes a deadline; nothing blocks in the kernel without
//! one (all sockets are non-blocking and readiness goes through poll(2)).

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

mod clients;
mod counters;
mod idle;
mod netns;
mod sockets;
mod trace;

pub use clients::{exchange, fates, Client, Exchange, Fate, Fates};
pub use counters::{
    read_sysctl, set_migrate_req, set_sysctl, write_sysctl, Reason, TcpExt, LISTEN_DROPS,
    LISTEN_OVERFLOWS, MIGRATE_FAIL, MIGRATE_OK, MIGRATE_REQ, SYNACK_RETRANS, TFO_PASSIVE,
};
pub use idle::{slab_objects, slab_objects_of, sockstat, tcp_inuse, tcp_orphans, Idle};
pub use netns::{
    enter_fresh_netns, ip, link_exists, lock_in_memory, outrun_kworkers, pin_to_cpu, BusyCpu,
    Netns, TimersStayLocal, UnboundWorkOn,
};
pub use sockets::{
    count_on, setsockopt_int, tcp_info, tcp_state, Accepted, Family, Group, Stop, TCP_ESTABLISHED,
    TCP_SYN_RECV,
};
pub use trace::{mount_pseudo_fs, start_trace, ParkEvent, Trace};

/// Prefix of a line a test prints to report what it measured; the runner
/// appends it to the test's `ok` line.
pub const NOTE: &str = "NOTE ";

/// Reports a measured fact alongside the verdict.
pub fn note(msg: &str) {
    println!("{NOTE}{msg}");
}

/// Upper bound for one awaited event (a queue filling, a reply arriving).
/// Generous on purpose: under TCG the guest is 10-50x slower than a host,
/// and a passing test never waits this long.
const EVENT_TIMEOUT_BASE: Duration = Duration::from_secs(5);

/// How much slower than the plain test kernel the running one is: the
/// debug flavour (KASAN, lockdep) is about 100 times slower, and the
/// runner says so with `RM_TIME_SCALE`. Every bound of the suite is
/// scaled by it; what a test waits for is an event, never a time.
pub fn time_scale() -> u32 {
    static SCALE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("RM_TIME_SCALE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| (1..=1000).contains(&n))
            .unwrap_or(1)
    })
}

/// A bound of the suite, scaled for the kernel under test.
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// [`EVENT_TIMEOUT_BASE`] on the kernel under test.
pub fn event_timeout() -> Duration {
    scaled(EVENT_TIMEOUT_BASE)
}

/// How often a condition that has no file descriptor to poll is re-checked.
const POLL_STEP: Duration = Duration::from_millis(2);

/// Which kernel the suite runs on (the VM runner says so). Tests of what
/// the series adds beyond upstream assert the upstream behaviour on `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    Base,
    Patched,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Base => "base",
            Kernel::Patched => "patched",
        }
    }
}

/// Set once, before any test runs, when the kernel carries only the `net`
/// queue (the three fixes, as net would take them): its fixes behave as
/// the patched kernel's, but net-next's per-reason counters and
/// tracepoints are not there, so tests check what upstream can show (the
/// clients, the queues, `TCPMigrateReqSuccess` and `TCPMigrateReqFailure`).
static NET_QUEUE_ONLY: AtomicBool = AtomicBool::new(false);

pub fn set_net_queue_only() {
    NET_QUEUE_ONLY.store(true, Ordering::Relaxed);
}

/// Whether the kernel has net-next's per-reason counters and tracepoints:
/// the patched kernel, unless it carries only the `net` queue.
pub fn observes_reasons(kernel: Kernel) -> bool {
    kernel == Kernel::Patched && !NET_QUEUE_ONLY.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Checks: collect every mismatch with its numbers, fail once at the end.

/// The error a test returns when the kernel under test lacks what it needs
/// (reported as SKIP with the reason, not as a failure).
#[derive(Debug)]
pub struct Skip(pub String);

impl Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// In [`Checks::reasons`]: this reason accounts for every failure.
pub const ALL_FAILURES: u64 = u64::MAX;

#[derive(Default)]
pub struct Checks {
    bad: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn eq<T: PartialEq + Display>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.bad.push(format!("{what}: got {got}, want {want}"));
        }
    }

    pub fn ge<T: PartialOrd + Display>(&mut self, what: &str, got: T, min: T) {
        if got < min {
            self.bad.push(format!("{what}: got {got}, want >= {min}"));
        }
    }

    pub fn le<T: PartialOrd + Display>(&mut self, what: &str, got: T, max: T) {
        if got > max {
            self.bad.push(format!("{what}: got {got}, want <= {max}"));
        }
    }

    /// `TCPMigrateReqSuccess` and `TCPMigrateReqFailure` grew by exactly
    /// `ok` and `fail` from `start` to `now`; `when` ends both labels.
    pub fn migrations(
        &mut self,
        when: &str,
        start: &TcpExt,
        now: &TcpExt,
        ok: u64,
        fail: u64,
    ) -> Result<()> {
        let label = |counter: &str| format!("{counter} {when}").trim_end().to_string();
        self.eq(
            &label("TCPMigrateReqSuccess"),
            now.since(start, MIGRATE_OK)?,
            ok,
        );
        self.eq(
            &label("TCPMigrateReqFailure"),
            now.since(start, MIGRATE_FAIL)?,
            fail,
        );
        Ok(())
    }

    /// Why migrations failed since `start`; returns the counters it read.
    ///
    /// Patched kernel: each per-reason counter grew by what `fails` lists
    /// (0 if absent; [`ALL_FAILURES`] for "as much as TCPMigrateReqFailure")
    /// and together they grew as much as `TCPMigrateReqFailure`; `trace`
    /// (started together with `start`) holds one `kind` event per success
    /// and per failure, with the same reasons. The counters and the trace
    /// are read until they agree on the number of attempts, so an attempt
    /// landing between the two reads cannot make a mismatch.
    /// Base kernel: the per-reason counters do not exist.
    pub fn reasons(
        &mut self,
        kernel: Kernel,
        start: &TcpExt,
        trace: Option<&Trace>,
        kind: &str,
        fails: &[(Reason, u64)],
    ) -> Result<TcpExt> {
        if !observes_reasons(kernel) {
            let now = TcpExt::read()?;
            for r in Reason::ALL {
                self.eq(
                    &format!("{} kernel has {}", kernel.name(), r.counter()),
                    now.get(r.counter()).is_ok(),
                    false,
                );
            }
            return Ok(now);
        }
        let attempts = |t: &TcpExt| -> Result<u64> {
            Ok(t.since(start, MIGRATE_OK)? + t.since(start, MIGRATE_FAIL)?)
        };
        let mut now = TcpExt::read()?;
        let mut events = HashMap::new();
        if let Some(trace) = trace {
            wait_until(event_timeout(), || {
                events = trace.counts()?;
                now = TcpExt::read()?;
                Ok(events.values().sum::<u64>() == attempts(&now)?)
            })?;
        }
        let failed = now.since(start, MIGRATE_FAIL)?;
        let want = |r: Reason| {
            fails
                .iter()
                .filter(|(x, _)| *x == r)
                .map(|(_, n)| if *n == ALL_FAILURES { failed } else { *n })
                .sum::<u64>()
        };
        let mut sum = 0;
        let mut want_events = Vec::new();
        let ok = now.since(start, MIGRATE_OK)?;
        if ok > 0 {
            want_events.push(format!("{kind}/ok={ok}"));
        }
        for r in Reason::ALL {
            let grew = now.since(start, r.counter())?;
            sum += grew;
            self.eq(r.counter(), grew, want(r));
            if grew > 0 {
                want_events.push(format!("{kind}/{}={grew}", r.traced()));
            }
        }
        self.eq("per-reason failure counters summed", sum, failed);
        if trace.is_some() {
            let mut got: Vec<String> = events.iter().map(|(k, n)| format!("{k}={n}")).collect();
            got.sort();
            want_events.sort();
            self.eq(
                "tcp:tcp_reuseport_migrate events (kind/result=count)",
                got.join(" "),
                want_events.join(" "),
            );
        }
        Ok(now)
    }

    /// Exactly `n` migrations since `start`, all failed for `why` (see
    /// [`Checks::reasons`]); returns the counters it read.
    pub fn all_failed(
        &mut self,
        kernel: Kernel,
        start: &TcpExt,
        trace: Option<&Trace>,
        kind: &str,
        why: Reason,
        n: u64,
    ) -> Result<TcpExt> {
        let now = self.reasons(kernel, start, trace, kind, &[(why, n)])?;
        self.migrations("", start, &now, 0, n)?;
        Ok(now)
    }

    /// Fails now if anything so far mismatched: later steps would only
    /// produce follow-up noise.
    pub fn gate(&mut self, stage: &str) -> Result<()> {
        if self.bad.is_empty() {
            return Ok(());
        }
        let msg = format!("{stage}: {}", self.bad.join("; "));
        self.bad.clear();
        Err(anyhow!(msg))
    }

    pub fn finish(mut self) -> Result<()> {
        self.gate("end")
    }
}

// ---------------------------------------------------------------------------
// Time

#[derive(Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// Re-checks `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Deadline::after(timeout);
    loop {
        if cond()? {
            return Ok(true);
        }
        if deadline.expired() {
            return Ok(false);
        }
        thread::sleep(POLL_STEP.min(deadline.remaining()));
    }
}

/// poll(2) on one descriptor; true if any of `events` (or an error/hangup)
/// is reported before the deadline.
pub fn poll_fd(fd: RawFd, events: libc::c_short, deadline: Deadline) -> Result<bool> {
    loop {
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = deadline.remaining().as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        return Ok(n > 0);
    }
}
