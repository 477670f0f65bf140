// SPDX-License-Identifier: GPL-2.0
//! The supervisor: worker processes, the rolling restart, the whole run.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::client::Load;
use crate::report::Outcome;
use crate::{netns, Order, Pattern, RunArgs, StopBy};

const TICK: Duration = Duration::from_millis(10);
/// The load lasts at most this many times `--duration-ms`.
const LOAD_CAP_FACTOR: u64 = 10;

/// One worker process and its two pipes.
struct Proc {
    id: u64,
    child: Child,
    ctl: Option<ChildStdin>,
    out: ChildStdout,
    buf: Vec<u8>,
    eof: bool,
    ready: bool,
    closed: bool,
    served: u64,
    errors: u64,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(exe: &PathBuf, a: &RunArgs, id: u64) -> Result<Proc> {
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .args(["--id", &id.to_string()])
            .args(["--family", &a.family.as_num().to_string()])
            .args(["--port", &a.port.to_string()])
            .args(["--backlog", &a.backlog.to_string()])
            .args(["--work-ms", &a.work_ms.to_string()])
            .args(["--timeout-ms", &a.timeout_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl() is async-signal-safe. Workers spawn only from the
        // main thread, which outlives them, so PDEATHSIG fires only if the
        // supervisor itself dies.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start worker {id} ({})", exe.display()))?;
        let ctl = child.stdin.take();
        let out = child.stdout.take().expect("stdout is piped");
        Ok(Proc {
            id,
            child,
            ctl,
            out,
            buf: Vec::new(),
            eof: false,
            ready: false,
            closed: false,
            served: 0,
            errors: 0,
            status: None,
        })
    }

    /// Read whatever the worker has written, without blocking.
    fn pump(&mut self) {
        while !self.eof && readable(&self.out, Duration::ZERO) {
            let mut chunk = [0u8; 512];
            match self.out.read(&mut chunk) {
                Ok(0) | Err(_) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..nl]).into_owned();
            self.event(&line);
        }
    }

    fn event(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ready") => self.ready = true,
            Some("closed") => self.closed = true,
            Some("exit") => {
                for w in words {
                    if let Some(v) = w.strip_prefix("served=") {
                        self.served = v.parse().unwrap_or(0);
                    } else if let Some(v) = w.strip_prefix("errors=") {
                        self.errors = v.parse().unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    }

    /// Wait until `done(self)` or the worker's stdout closes or `deadline`.
    fn wait_for(&mut self, done: fn(&Proc) -> bool, deadline: Instant) -> bool {
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.eof || left.is_zero() {
                return false;
            }
            readable(&self.out, left.min(Duration::from_millis(100)));
        }
    }

    /// Ask the worker to stop accepting but keep its listener open.
    fn request_hold(&mut self) -> Result<()> {
        match self.ctl.as_mut() {
            Some(c) => c
                .write_all(b"hold\n")
                .with_context(|| format!("cannot tell worker {} to hold", self.id)),
            None => anyhow::bail!("worker {} is already stopping", self.id),
        }
    }

    /// Ask the worker to stop: a line, then EOF, on its control pipe.
    fn request_stop(&mut self) {
        if let Some(mut c) = self.ctl.take() {
            let _ = c.write_all(b"stop\n");
        }
    }

    /// Reap if it has exited. True once reaped.
    fn try_reap(&mut self) -> bool {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
                self.pump();
            }
        }
        self.status.is_some()
    }

    /// Send `sig` to the worker, unless it is already reaped.
    fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id()).context("worker pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .with_context(|| format!("cannot send {sig} to worker {}", self.id))
    }

    /// Wait until the worker exited and reap it. False if it did not
    /// within `deadline`.
    fn wait_exit(&mut self, deadline: Instant) -> bool {
        while !self.try_reap() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(TICK);
        }
        true
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
            self.pump();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Never leave a worker running or a zombie behind.
        self.kill();
    }
}

/// The scheduler state and wait channel of process `pid`, from /proc.
fn proc_state(pid: u32) -> String {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    // The state follows the command name in parentheses, which may hold
    // spaces.
    let stat = read("stat");
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let wchan = read("wchan");
    let wchan = if wchan.trim().is_empty() {
        "?"
    } else {
        wchan.trim()
    };
    format!("state {state}, wchan {wchan}")
}

fn readable(out: &ChildStdout, wait: Duration) -> bool {
    let mut fds = [PollFd::new(out.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// The live workers (one per slot) and those on their way out.
struct Pool<'a> {
    a: &'a RunArgs,
    exe: PathBuf,
    t0: Instant,
    live: Vec<Option<Proc>>,
    retiring: Vec<(Proc, Instant)>,
    next_id: u64,
    restarts: u64,
    restart_failures: u64,
    worker_served: u64,
    worker_errors: u64,
    /// Longest time from spawn to `ready` of a worker that started.
    slowest_start: Duration,
    errors: Vec<String>,
}

impl<'a> Pool<'a> {
    fn new(a: &'a RunArgs, t0: Instant) -> Result<Pool<'a>> {
        let exe = std::env::current_exe().context("cannot find my own executable")?;
        Ok(Pool {
            a,
            exe,
            t0,
            live: (0..a.workers).map(|_| None).collect(),
            retiring: Vec::new(),
            next_id: 0,
            restarts: 0,
            restart_failures: 0,
            worker_served: 0,
            worker_errors: 0,
            slowest_start: Duration::ZERO,
            errors: Vec::new(),
        })
    }

    fn log(&self, msg: &str) {
        if self.a.verbose {
            eprintln!("storm [{:>6} ms] {msg}", self.t0.elapsed().as_millis());
        }
    }

    fn ready_timeout(&self) -> Duration {
        Duration::from_millis(self.a.ready_timeout_ms)
    }

    /// Start a worker and wait until it listens.
    fn start_worker(&mut self) -> Result<Proc> {
        let id = self.next_id;
        self.next_id += 1;
        let t = Instant::now();
        let mut p = Proc::spawn(&self.exe, self.a, id)?;
        if p.wait_for(|p| p.ready, t + self.ready_timeout()) {
            self.slowest_start = self.slowest_start.max(t.elapsed());
            return Ok(p);
        }
        // Tell a worker that failed (its error is on stderr) from one that
        // hangs: a closed stdout means it is on its way out, so give it a
        // moment to exit with a status of its own before kill() reaps it.
        let exited = p.eof && p.wait_exit(Instant::now() + Duration::from_secs(1));
        let how = match p.status {
            Some(st) if exited => format!("exited ({st})"),
            _ if p.eof => {
                p.kill();
                "closed its stdout but did not exit: killed".into()
            }
            _ => {
                // Where it waits, for whoever diagnoses it: a hang sleeps
                // in one place, a starved start is runnable.
                let seen = proc_state(p.child.id());
                p.kill();
                format!(
                    "still starting after {} ms ({seen}): killed",
                    self.a.ready_timeout_ms
                )
            }
        };
        anyhow::bail!("worker {id} did not report listening: {how}")
    }

    /// Stop a worker as `--stop-by` says and wait until its listener is
    /// closed; then let it finish in the background (killed after the
    /// grace period).
    fn stop_worker(&mut self, mut p: Proc) {
        let grace = Duration::from_millis(self.a.grace_ms);
        let sig = match self.a.stop_by {
            StopBy::Close => None,
            StopBy::Term => Some(Signal::SIGTERM),
            StopBy::Kill => Some(Signal::SIGKILL),
        };
        if let Some(sig) = sig {
            // The process's exit closes its listener: once it is reaped
            // the listener is closed. It says nothing on its way out, so
            // what it served is not in worker_served.
            if let Err(e) = p.signal(sig) {
                self.errors.push(format!("{e:#}"));
            }
            if !p.wait_exit(Instant::now() + grace) {
                self.errors.push(format!(
                    "worker {} still running {} ms after {sig}: killed",
                    p.id, self.a.grace_ms
                ));
                p.kill();
            }
            self.retiring.push((p, Instant::now()));
            return;
        }
        p.request_stop();
        if !p.wait_for(|p| p.closed, Instant::now() + grace) {
            self.errors.push(format!(
                "worker {} did not close its listener within {} ms: killed",
                p.id, self.a.grace_ms
            ));
            p.kill();
        }
        self.retiring.push((p, Instant::now() + grace));
    }

    /// `--hold-ms`: let the workers' accept queues fill before they
    /// close, all of them during one hold.
    fn hold_before_stop(&mut self, procs: &mut [&mut Proc]) {
        if self.a.hold_ms == 0 {
            return;
        }
        let mut held = false;
        for p in procs.iter_mut() {
            match p.request_hold() {
                Ok(()) => held = true,
                Err(e) => self.errors.push(format!("{e:#}")),
            }
        }
        if held {
            std::thread::sleep(Duration::from_millis(self.a.hold_ms));
        }
    }

    fn restart(&mut self, slot: usize) {
        let old_id = match &self.live[slot] {
            Some(p) => p.id.to_string(),
            None => "-".into(),
        };
        let ok = match self.a.order {
            Order::StartFirst => match self.start_worker() {
                Ok(new) => {
                    let new_id = new.id;
                    if let Some(mut old) = self.live[slot].replace(new) {
                        self.hold_before_stop(&mut [&mut old]);
                        self.stop_worker(old);
                    }
                    self.log(&format!(
                        "slot {slot}: worker {new_id} listening, worker {old_id} closed"
                    ));
                    true
                }
                Err(e) => {
                    self.errors.push(format!("restart of slot {slot}: {e:#}"));
                    false
                }
            },
            Order::StopFirst => {
                if let Some(mut old) = self.live[slot].take() {
                    self.hold_before_stop(&mut [&mut old]);
                    self.stop_worker(old);
                }
                match self.start_worker() {
                    Ok(new) => {
                        self.log(&format!(
                            "slot {slot}: worker {old_id} closed, worker {} listening",
                            new.id
                        ));
                        self.live[slot] = Some(new);
                        true
                    }
                    Err(e) => {
                        self.errors.push(format!("restart of slot {slot}: {e:#}"));
                        false
                    }
                }
            }
        };
        if ok {
            self.restarts += 1;
        } else {
            self.restart_failures += 1;
        }
    }

    /// Scale down: stop the worker of the last slot, and drop the slot.
    fn retire_last(&mut self) {
        if let Some(Some(p)) = self.live.pop() {
            let id = p.id;
            self.stop_worker(p);
            self.restarts += 1;
            self.log(&format!("worker {id} closed, {} left", self.live.len()));
        }
    }

    /// Stop every worker (all listeners closed), wait `gap`, start N new.
    fn stop_all_then_start(&mut self, gap: Duration) {
        let mut procs: Vec<Proc> = self.live.iter_mut().filter_map(Option::take).collect();
        self.hold_before_stop(&mut procs.iter_mut().collect::<Vec<_>>());
        if self.a.stop_by == StopBy::Close {
            // All told at once, so the listeners close together.
            for p in &mut procs {
                p.request_stop();
            }
        }
        for p in procs {
            self.stop_worker(p);
        }
        self.log("all listeners closed");
        std::thread::sleep(gap);
        for slot in 0..self.live.len() {
            match self.start_worker() {
                Ok(p) => {
                    self.live[slot] = Some(p);
                    self.restarts += 1;
                }
                Err(e) => {
                    self.errors.push(format!("restart of slot {slot}: {e:#}"));
                    self.restart_failures += 1;
                }
            }
        }
        self.log("all workers listening again");
    }

    /// Reap retired workers and kill those past their grace period; notice
    /// live workers that died on their own and replace them.
    fn housekeeping(&mut self) {
        self.reap_retiring();
        self.replace_dead();
    }

    fn reap_retiring(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.retiring.len() {
            let (p, deadline) = &mut self.retiring[i];
            p.pump();
            if !p.try_reap() && now < *deadline {
                i += 1;
                continue;
            }
            let (mut p, _) = self.retiring.swap_remove(i);
            if p.status.is_none() {
                self.errors.push(format!(
                    "worker {} still running {} ms after stop: killed",
                    p.id, self.a.grace_ms
                ));
                p.kill();
            }
            self.account(&p);
        }
    }

    fn replace_dead(&mut self) {
        for slot in 0..self.live.len() {
            let died = match self.live[slot].as_mut() {
                Some(p) => {
                    p.pump();
                    p.try_reap() || p.eof
                }
                None => true,
            };
            if !died {
                continue;
            }
            if let Some(mut p) = self.live[slot].take() {
                p.kill();
                self.errors
                    .push(format!("worker {} (slot {slot}) died unexpectedly", p.id));
                self.account(&p);
            }
            match self.start_worker() {
                Ok(p) => self.live[slot] = Some(p),
                Err(e) => self.errors.push(format!("slot {slot}: {e:#}")),
            }
        }
    }

    fn account(&mut self, p: &Proc) {
        self.worker_served += p.served;
        self.worker_errors += p.errors;
        if let Some(st) = p.status {
            if !st.success() && p.closed {
                self.errors
                    .push(format!("worker {} exited with {st} after closing", p.id));
            }
        }
    }

    /// Stop every worker and wait for all of them (bounded by grace).
    fn shutdown(&mut self) {
        let procs: Vec<Proc> = self.live.iter_mut().filter_map(Option::take).collect();
        let grace = Instant::now() + Duration::from_millis(self.a.grace_ms);
        for mut p in procs {
            p.request_stop();
            self.retiring.push((p, grace));
        }
        while !self.retiring.is_empty() {
            self.reap_retiring();
            if !self.retiring.is_empty() {
                std::thread::sleep(TICK);
            }
        }
    }
}

/// The whole storm, run in the current (private) namespace, whose
/// `tcp_migrate_req` is `migrate_req` (as set by [`netns::set_migrate_req`]).
pub fn run_storm(a: &RunArgs, migrate_req: Option<u32>) -> Result<Outcome> {
    if a.pattern == Pattern::Stalled {
        anyhow::ensure!(
            a.workers >= 2,
            "--pattern stalled needs --workers 2 or more (one holds, the others restart)"
        );
    }
    let t0 = Instant::now();
    let before = netns::tcp_ext()?;
    let mut pool = Pool::new(a, t0)?;
    for slot in 0..pool.live.len() {
        match pool.start_worker() {
            Ok(p) => pool.live[slot] = Some(p),
            Err(e) => {
                pool.shutdown();
                return Err(e);
            }
        }
    }
    pool.log(&format!("{} workers listening", a.workers));

    let timeout = Duration::from_millis(a.timeout_ms);
    let load_start = Instant::now();
    let end = load_start + Duration::from_millis(a.duration_ms);
    // A finite plan (every restart of it) is carried out even if it takes
    // longer than the duration (slow worker starts), up to this bound.
    let cap = load_start + Duration::from_millis(a.duration_ms.saturating_mul(LOAD_CAP_FACTOR));
    let mut load = match Load::start(a.clients, a.family.addr(a.port), timeout, cap, a.rate) {
        Ok(l) => l,
        Err(e) => {
            pool.shutdown();
            return Err(e);
        }
    };

    let every = Duration::from_millis(a.restart_every_ms);
    let mut next = load_start + every;
    let mut slot = 0;
    let mut events = 0u64;
    let mut plan_done = every.is_zero();
    if a.pattern == Pattern::Stalled {
        slot = 1;
        match pool.live[0].as_mut().map(|p| (p.id, p.request_hold())) {
            Some((id, Ok(()))) => pool.log(&format!("worker {id} holds (stops accepting)")),
            Some((_, Err(e))) => pool.errors.push(format!("{e:#}")),
            None => {}
        }
    }
    let endless = a.pattern == Pattern::Rolling && a.restarts == 0;
    loop {
        let now = Instant::now();
        // An endless rolling storm makes one restart at least, however
        // late (up to the cap): a guest too loaded to make one within the
        // duration would otherwise end it having restarted nothing, and
        // its check would fail for want of a restart, not of a kernel.
        let endless_done = endless && pool.restarts > 0;
        if now >= cap || (now >= end && (plan_done || endless_done)) {
            if !plan_done && !endless {
                pool.errors.push(format!(
                    "restart plan not done after {} ms ({events} steps): load stopped",
                    cap.duration_since(load_start).as_millis()
                ));
            }
            break;
        }
        if !plan_done && now >= next {
            events += 1;
            match a.pattern {
                Pattern::Rolling => {
                    pool.restart(slot);
                    slot = (slot + 1) % pool.live.len();
                    plan_done = a.restarts > 0 && events >= a.restarts;
                }
                Pattern::Stalled => {
                    pool.restart(slot);
                    slot += 1;
                    plan_done = slot >= pool.live.len();
                }
                Pattern::ScaleDown => {
                    pool.retire_last();
                    plan_done = pool.live.len() <= (a.workers as usize / 2).max(1);
                }
                Pattern::StopStart => {
                    pool.stop_all_then_start(Duration::from_millis(a.gap_ms));
                    plan_done = events >= a.restarts.max(1);
                }
            }
            // A step that overran its period (a slow worker start under
            // TCG) must still leave the new workers half a period to
            // serve: otherwise the next hold begins as soon as they
            // listen, and what they just adopted is parked and migrated
            // again while its clients wait (stop 19's restart-loop
            // timeouts, reproduced by scripts/bench's tracing).
            next = (next + every).max(Instant::now() + every / 2);
            continue;
        }
        pool.housekeeping();
        let until = if plan_done {
            end.max(now + TICK)
        } else {
            next.min(cap)
        };
        std::thread::sleep(until.saturating_duration_since(Instant::now()).min(TICK));
    }
    let tally = load.finish();
    let load_elapsed = load_start.elapsed();
    pool.log("load stopped");
    pool.shutdown();
    pool.log("all workers gone");
    let after = netns::tcp_ext()?;

    let delta = |name: &str| match (before.get(name), after.get(name)) {
        (Some(b), Some(a)) => Some(a.saturating_sub(*b)),
        _ => None,
    };
    let mut tcp_ext_moved: Vec<(String, u64)> = after
        .keys()
        .filter_map(|k| delta(k).filter(|&d| d > 0).map(|d| (k.clone(), d)))
        .collect();
    tcp_ext_moved.sort();
    let mut errors = std::mem::take(&mut pool.errors);
    if tally.panics > 0 {
        errors.push(format!("{} client thread(s) panicked", tally.panics));
    }
    Ok(Outcome {
        args: a.clone(),
        migrate_req,
        restarts: pool.restarts,
        restart_failures: pool.restart_failures,
        worker_served: pool.worker_served,
        worker_errors: pool.worker_errors,
        slowest_start: pool.slowest_start,
        migrate_success: delta("TCPMigrateReqSuccess"),
        migrate_failure: delta("TCPMigrateReqFailure"),
        listen_overflows: delta("ListenOverflows"),
        listen_drops: delta("ListenDrops"),
        tcp_ext_moved,
        load_elapsed,
        elapsed: t0.elapsed(),
        errors,
        tally,
    })
}
