// SPDX-License-Identifier: GPL-2.0
//! `storm nginx`: a real server under a real load generator. Debian's
//! nginx listens on loopback of a private namespace with `reuseport` (one
//! SO_REUSEPORT listener per worker process) while wrk loads it; the whole
//! server is stopped (SIGQUIT, which is `nginx -s quit`, or SIGTERM) and a
//! new nginx is started `--gap-ms` after the old one has exited, as a
//! `systemctl restart` does. wrk counts what failed.
//!
//! Every request has a connection of its own (wrk sends `Connection:
//! close`, nginx keeps no connection alive). A restart can then lose a
//! request only through what the kernel does with the connections and the
//! SYNs of the old server, which is what is measured: with keep-alive,
//! the old server closing an idle connection while wrk sends on it loses
//! a request whatever the kernel does.
//!
//! wrk reconnects at once after a failure, so its counts are failed
//! attempts: a port that refuses connections for 100 ms counts once per
//! retry of each wrk connection. wrk itself never counts a request that
//! gets no answer at all (its `--timeout` only marks late answers), so
//! each wrk thread drives one connection and its Lua hooks note when that
//! connection last got an answer: one silent for longer than the timeout
//! at the end is counted as stalled.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::report::Expect;
use crate::summary::Row;
use crate::{netns, Family, SysctlMode};

/// How the running nginx is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NginxStop {
    /// SIGQUIT (`nginx -s quit`, systemd's ExecStop of Debian's unit):
    /// the listeners close at once, the requests already accepted are
    /// answered, then nginx exits.
    Quit,
    /// SIGTERM (`nginx -s stop`): nginx exits at once; what its workers
    /// had accepted and not answered is lost whatever the kernel does.
    Term,
}

impl NginxStop {
    fn signal(self) -> Signal {
        match self {
            NginxStop::Quit => Signal::SIGQUIT,
            NginxStop::Term => Signal::SIGTERM,
        }
    }

    /// The storm pattern name in the JSON and the summary table.
    pub fn pattern(self) -> &'static str {
        match self {
            NginxStop::Quit => "nginx-quit-start",
            NginxStop::Term => "nginx-term-start",
        }
    }
}

/// The `storm nginx` command line.
#[derive(Args, Clone, Debug)]
pub struct NginxArgs {
    /// net.ipv4.tcp_migrate_req to set in the namespace.
    #[arg(long, value_enum, default_value = "1")]
    pub sysctl: SysctlMode,
    /// net.ipv4.tcp_migrate_req_grace_ms to set in the namespace (0: leave
    /// it; the base kernel has no such sysctl).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub park_grace_ms: u64,
    /// Address family (loopback only).
    #[arg(long, value_enum, default_value = "4")]
    pub family: Family,
    /// nginx worker processes, each with a reuseport listener of its own.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub workers: u32,
    /// wrk connections, each sending one request after another, each in a
    /// wrk thread of its own.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
    /// Longest load, in seconds. wrk is stopped `--timeout-s` + 2 s after
    /// the last restart's nginx listens, so that a connection that restart
    /// left without an answer is silent long enough to count as stalled;
    /// a run whose load ends earlier fails.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Restarts of the whole server during the load.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub restarts: u64,
    /// Time from the start of the load (or the previous restart's new
    /// nginx) to the next stop.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub restart_every_ms: u64,
    /// Time between the old nginx's exit and the new nginx's start.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub gap_ms: u64,
    /// How the old nginx is stopped.
    #[arg(long, value_enum, default_value = "quit")]
    pub stop_by: NginxStop,
    /// A response later than this counts as lost, and so does a connection
    /// without any answer for longer at the end of the load, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout_s: u64,
    /// Longest wait for an nginx to listen, and again for it to exit once
    /// stopped, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub ready_timeout_ms: u64,
    /// Port nginx listens on (in the private namespace).
    #[arg(long, default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// listen() backlog of each nginx worker's socket.
    #[arg(long, default_value_t = 511, value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,
    /// Write the result as JSON to this file (readable by `storm summary`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// What this run is, in the JSON and in `storm summary`.
    #[arg(long)]
    pub label: Option<String>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// Directory for nginx's configuration, pid file and logs (default: a
    /// new one under the temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Fail unless no request failed, every restart happened and some
    /// requests were served.
    #[arg(long, conflicts_with = "expect_loss")]
    pub expect_lossless: bool,
    /// Fail unless at least one request failed (and every restart happened).
    #[arg(long)]
    pub expect_loss: bool,
}

impl NginxArgs {
    /// What `--expect-*` asks for, if anything.
    pub fn expect(&self) -> Option<Expect> {
        match (self.expect_lossless, self.expect_loss) {
            (true, _) => Some(Expect::Lossless),
            (_, true) => Some(Expect::Loss),
            _ => None,
        }
    }
}

/// What wrk's `done()` hook of [`report_lua`] prints: wrk's summary, whose
/// error counts are per failed attempt, and what the hooks counted
/// themselves per response and per connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct WrkSummary {
    /// Responses received (any status, however late).
    pub requests: u64,
    /// connect() failed at once.
    pub connect: u64,
    /// A read failed, or the connection ended before the response: a reset.
    pub read: u64,
    /// A write failed: a non-blocking connect() refused later shows here.
    pub write: u64,
    /// wrk's count of responses with a status of 400 or more.
    pub status: u64,
    /// wrk's timeout count, for the record only: wrk adds one for every
    /// connection still waiting at each of its 2 s checks, so one slow
    /// request counts several times, and one never answered counts too.
    pub timeout: u64,
    /// Responses that came more than `--timeout-s` after their request
    /// was sent (the hooks' count, in whole seconds).
    pub late: u64,
    /// Responses in time with a status of 400 or more (the hooks' count).
    pub failed: u64,
    /// Connections without any answer for longer than the timeout when
    /// the load ended (at the second: the hooks' clock is os.time()).
    pub stalled: u64,
}

impl WrkSummary {
    /// The summary line that the hooks print among wrk's output.
    pub fn parse(stdout: &str) -> Result<WrkSummary> {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with("{\"requests\""))
            .ok_or_else(|| anyhow!("wrk printed no summary line; its output:\n{stdout}"))?;
        let s: WrkSummary =
            serde_json::from_str(line.trim()).with_context(|| format!("wrk summary {line:?}"))?;
        ensure!(
            s.late + s.failed <= s.requests,
            "wrk summary {line:?}: more late or failed responses than responses"
        );
        Ok(s)
    }

    /// Requests that got a response or failed, and those still unanswered.
    pub fn attempted(&self) -> u64 {
        self.requests + self.connect + self.read + self.write + self.stalled
    }

    /// Responses in time with a success status: each response is late,
    /// failed or served, never two of them.
    pub fn served(&self) -> u64 {
        self.requests.saturating_sub(self.late + self.failed)
    }

    /// Requests without a timely successful response.
    pub fn lost(&self) -> u64 {
        self.attempted() - self.served()
    }
}

/// wrk's hooks: every thread (one connection each) notes when it sent its
/// request and when it last got an answer, and counts its late and its
/// failed responses; `done()` prints wrk's summary, those counts and the
/// threads silent for more than `timeout_s` as one JSON line.
pub fn report_lua(timeout_s: u64) -> String {
    format!(
        r#"local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  answered, sent, late, failed = os.time(), os.time(), 0, 0
end
function request()
  sent = os.time()
  return wrk.format()
end
function response(status, headers, body)
  answered = os.time()
  if answered - sent > {timeout_s} then
    late = late + 1
  elseif status >= 400 then
    failed = failed + 1
  end
end
function done(summary, latency, requests)
  local now, stalled, late, failed = os.time(), 0, 0, 0
  for _, t in ipairs(threads) do
    if now - t:get("answered") > {timeout_s} then
      stalled = stalled + 1
    end
    late = late + t:get("late")
    failed = failed + t:get("failed")
  end
  local e = summary.errors
  io.write(string.format(
    '{{"requests":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"late":%d,"failed":%d,"stalled":%d}}\n',
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout, late, failed, stalled))
end
"#
    )
}

/// The nginx configuration: one reuseport listener per worker, no
/// keep-alive, no logs or temporary files outside `dir` (the guest's root
/// is read-only), a constant answer.
pub fn nginx_conf(a: &NginxArgs, dir: &Path) -> String {
    let d = dir.display();
    let listen = match a.family {
        Family::V4 => format!("127.0.0.1:{}", a.port),
        Family::V6 => format!("[::1]:{}", a.port),
    };
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         pid {d}/nginx.pid;\n\
         error_log stderr notice;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   keepalive_timeout 0;\n\
         \x20   client_body_temp_path {d}/body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   server {{\n\
         \x20       listen {listen} reuseport backlog={backlog};\n\
         \x20       location / {{ return 200 \"ok\\n\"; }}\n\
         \x20   }}\n\
         }}\n",
        workers = a.workers,
        backlog = a.backlog,
    )
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct NginxOutcome {
    /// What `storm summary` reads, as `storm run --json` writes it.
    #[serde(flatten)]
    pub row: Row,
    pub tcp_migrate_req: Option<u32>,
    pub park_grace_ms: u64,
    pub nginx_workers: u32,
    pub wrk_connections: u32,
    pub duration_s: u64,
    pub gap_ms: u64,
    pub restart_every_ms: u64,
    pub migrate_req_failure: Option<u64>,
    pub parked: Option<u64>,
    pub adopted: Option<u64>,
    pub park_expired: Option<u64>,
    pub wrk: WrkSummary,
    /// How long each stopped nginx took to exit, in milliseconds.
    pub exit_ms: Vec<u128>,
    /// How long each new nginx took to listen, in milliseconds.
    pub start_ms: Vec<u128>,
    /// How long wrk's load lasted, in milliseconds.
    pub load_ms: u128,
}

impl NginxOutcome {
    fn new(a: &NginxArgs, migrate_req: Option<u32>, wrk: WrkSummary) -> NginxOutcome {
        NginxOutcome {
            row: Row {
                label: a.label.clone(),
                uname: Row::running_kernel(),
                family: a.family.as_num(),
                sysctl: a.sysctl.as_str().into(),
                pattern: a.stop_by.pattern().into(),
                attempted: wrk.attempted(),
                served: wrk.served(),
                reset: wrk.read,
                refused: wrk.connect + wrk.write,
                timeout: wrk.late + wrk.stalled,
                other: wrk.failed,
                lost: wrk.lost(),
                restarts: 0,
                migrate_req_success: None,
            },
            tcp_migrate_req: migrate_req,
            park_grace_ms: a.park_grace_ms,
            nginx_workers: a.workers,
            wrk_connections: a.connections,
            duration_s: a.duration_s,
            gap_ms: a.gap_ms,
            restart_every_ms: a.restart_every_ms,
            migrate_req_failure: None,
            parked: None,
            adopted: None,
            park_expired: None,
            wrk,
            exit_ms: Vec::new(),
            start_ms: Vec::new(),
            load_ms: 0,
        }
    }

    /// One line for the log.
    pub fn summary_line(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "n/a".into(), |v| v.to_string());
        format!(
            "nginx {} ipv{} tcp_migrate_req={} grace={}ms gap={}ms: attempted={} served={} \
             lost={} (reset={} refused={} late/stalled={} status={}) restarts={} migrated={} \
             parked={} adopted={} expired={} exits={:?}ms starts={:?}ms load={}ms",
            self.row.pattern,
            self.row.family,
            self.row.sysctl,
            self.park_grace_ms,
            self.gap_ms,
            self.row.attempted,
            self.row.served,
            self.row.lost,
            self.row.reset,
            self.row.refused,
            self.row.timeout,
            self.row.other,
            self.row.restarts,
            opt(self.row.migrate_req_success),
            opt(self.parked),
            opt(self.adopted),
            opt(self.park_expired),
            self.exit_ms,
            self.start_ms,
            self.load_ms,
        )
    }

    /// Ok(message) if the outcome is what `expect` asks for.
    pub fn verdict(&self, expect: Expect, restarts: u64) -> Result<String, String> {
        let mut why = Vec::new();
        if self.row.restarts != restarts {
            why.push(format!("{} of {restarts} restarts done", self.row.restarts));
        }
        match expect {
            Expect::Lossless if self.row.lost > 0 => why.push(format!("{} lost", self.row.lost)),
            Expect::Lossless if self.row.served == 0 => why.push("nothing served".into()),
            Expect::Loss if self.row.lost == 0 => why.push("nothing lost".into()),
            _ => {}
        }
        let what = match expect {
            Expect::Lossless => "expected lossless",
            Expect::Loss => "expected loss",
        };
        let counts = format!(
            "attempted={} served={} lost={}",
            self.row.attempted, self.row.served, self.row.lost
        );
        if why.is_empty() {
            Ok(format!("{what}: {counts}"))
        } else {
            Err(format!("{what}: {}: {counts}", why.join("; ")))
        }
    }

    /// Write the outcome as one JSON object to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Checks that `bin` runs (`bin -v`), naming the package otherwise.
fn need(bin: &Path, package: &str, flag: &str) -> Result<()> {
    match Command::new(bin)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot run {} (not installed, or not in PATH): install it with \
                 `apt-get install {package}` (scripts/setup-host does) or pass {flag} PATH",
                bin.display()
            )
        }),
    }
}

/// Set by SIGINT or SIGTERM: the run stops, and kills the nginx it
/// started rather than leave it in a namespace nothing can reach.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupts() -> Result<()> {
    let act = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(sig, &act) }.with_context(|| format!("sigaction({sig})"))?;
    }
    Ok(())
}

/// Seconds over `--timeout-s` that the load goes on after the last
/// restart: the hooks' clock counts whole seconds, and a connection counts
/// as stalled only when silent for more than the timeout.
const STALL_MARGIN_S: u64 = 2;

/// Sleeps for `d`, or fails as soon as the run is interrupted.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        ensure!(
            !INTERRUPTED.load(Ordering::Relaxed),
            "interrupted (SIGINT or SIGTERM)"
        );
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// One nginx: its master process and the log its stderr goes to.
struct Nginx {
    child: Child,
    log: PathBuf,
    /// Stopped and exited: its workers are gone with it.
    stopped: bool,
}

impl Nginx {
    /// Starts nginx and waits until it listens: its master writes the pid
    /// file once it has opened and bound every socket, and the sockets
    /// listen from then on.
    fn start(a: &NginxArgs, dir: &Path, n: u64) -> Result<Nginx> {
        let pid_file = dir.join("nginx.pid");
        let _ = fs::remove_file(&pid_file);
        let log = dir.join(format!("nginx-{n}.log"));
        let stderr = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(&a.nginx)
            // A group of its own: an nginx left behind by an error is
            // killed with its workers.
            .process_group(0)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {}", a.nginx.display()))?;
        let mut ng = Nginx {
            child,
            log,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_millis(a.ready_timeout_ms);
        loop {
            if let Some(st) = ng.child.try_wait()? {
                // Reaped: its pid, and so its group's, is no longer ours.
                ng.stopped = true;
                bail!(
                    "nginx #{n} exited ({st}) before listening: {}",
                    ng.log_tail()
                );
            }
            if fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == ng.child.id().to_string()) {
                return Ok(ng);
            }
            if Instant::now() > deadline {
                ng.kill();
                bail!(
                    "nginx #{n} wrote no pid file within {} ms: {}",
                    a.ready_timeout_ms,
                    ng.log_tail()
                );
            }
            pause(Duration::from_millis(10))?;
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        format!("{} (log {})", tail, self.log.display())
    }

    /// Stops nginx with `how` and waits for it to exit; returns how long
    /// that took.
    fn stop(mut self, how: NginxStop, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, how.signal()).with_context(|| format!("kill nginx {pid} with {how:?}"))?;
        loop {
            if self.child.try_wait()?.is_some() {
                self.stopped = true;
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                self.kill();
                bail!(
                    "nginx {pid} did not exit within {} ms of {:?}: {}",
                    timeout.as_millis(),
                    how.signal(),
                    self.log_tail()
                );
            }
            pause(Duration::from_millis(5))?;
        }
    }

    /// Kills the master and its workers: its process group, which is
    /// its own and which nothing else joins, is the master's pid until the
    /// master is reaped here.
    fn kill(&mut self) {
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.wait();
        self.stopped = true;
    }
}

/// An nginx that an error, an interruption or its own death left behind
/// is killed with its workers, not left in the namespace.
impl Drop for Nginx {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill();
        }
    }
}

/// The TcpExt counters this run reports, moved since `before`.
fn moved(before: &std::collections::HashMap<String, u64>, name: &str) -> Option<u64> {
    let now = netns::tcp_ext().ok()?;
    Some(now.get(name)?.saturating_sub(*before.get(name)?))
}

/// Runs the restarts under wrk's load in the current network namespace,
/// which the caller has made private and configured (`migrate_req` is the
/// tcp_migrate_req in force).
pub fn run(a: &NginxArgs, migrate_req: Option<u32>) -> Result<NginxOutcome> {
    need(&a.nginx, "nginx-light", "--nginx")?;
    need(&a.wrk, "wrk", "--wrk")?;
    let tail = Duration::from_secs(a.timeout_s + STALL_MARGIN_S);
    let planned = (a.restart_every_ms + a.gap_ms) * a.restarts + tail.as_millis() as u64;
    ensure!(
        planned < a.duration_s * 1000,
        "the restarts and the {} s after the last take at least {planned} ms, more \
         than the load's {} s: raise --duration-s or lower --restarts, \
         --restart-every-ms, --gap-ms or --timeout-s",
        tail.as_secs(),
        a.duration_s
    );
    catch_interrupts()?;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("storm-nginx-{}", std::process::id())),
    };
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    fs::write(dir.join("nginx.conf"), nginx_conf(a, &dir))?;
    let lua = dir.join("report.lua");
    fs::write(&lua, report_lua(a.timeout_s))?;
    let wrk_err = dir.join("wrk.err");
    let before = netns::tcp_ext().unwrap_or_default();

    let mut nginx = Some(Nginx::start(a, &dir, 0)?);
    let url = match a.family {
        Family::V4 => format!("http://127.0.0.1:{}/", a.port),
        Family::V6 => format!("http://[::1]:{}/", a.port),
    };
    // At nice 10: load from other machines would not compete with the
    // server's own start for the CPUs, and under TCG wrk's retries of
    // refused connections otherwise starve a starting nginx for seconds.
    let mut wrk = Command::new("nice")
        .args(["-n", "10"])
        .arg(&a.wrk)
        .arg(format!("-t{}", a.connections))
        .arg(format!("-c{}", a.connections))
        .arg(format!("-d{}s", a.duration_s))
        .arg(format!("--timeout={}s", a.timeout_s))
        .args(["-H", "Connection: close", "-s"])
        .arg(&lua)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&wrk_err)?)
        .spawn()
        .with_context(|| format!("start {}", a.wrk.display()))?;
    // Every restart must happen under the load.
    let load_start = Instant::now();
    let wrk_pid = Pid::from_raw(i32::try_from(wrk.id()).context("wrk's pid")?);
    let mut under_load = |what: &str, exit_ms: &[u128], start_ms: &[u128]| -> Result<()> {
        match wrk.try_wait()? {
            None => Ok(()),
            Some(st) => bail!(
                "wrk ended ({st}) {} ms into the load, before {what}: the restarts \
                 outlasted the load (raise --duration-s); nginx exits took {exit_ms:?} ms, \
                 starts {start_ms:?} ms; wrk said: {}",
                load_start.elapsed().as_millis(),
                fs::read_to_string(&wrk_err).unwrap_or_default().trim()
            ),
        }
    };

    let wait = Duration::from_millis(a.ready_timeout_ms);
    let mut restarts = 0;
    let (mut exit_ms, mut start_ms) = (Vec::new(), Vec::new());
    let restarted: Result<()> = (|| {
        for n in 1..=a.restarts {
            pause(Duration::from_millis(a.restart_every_ms))?;
            under_load(&format!("stop {n}"), &exit_ms, &start_ms)?;
            if let Some(old) = nginx.take() {
                exit_ms.push(old.stop(a.stop_by, wait)?.as_millis());
            }
            pause(Duration::from_millis(a.gap_ms))?;
            let t0 = Instant::now();
            nginx = Some(Nginx::start(a, &dir, n)?);
            start_ms.push(t0.elapsed().as_millis());
            under_load(&format!("the start after stop {n}"), &exit_ms, &start_ms)?;
            restarts += 1;
        }
        pause(tail)?;
        under_load(
            &format!("the end of the {} s after the last restart", tail.as_secs()),
            &exit_ms,
            &start_ms,
        )?;
        // wrk stops at SIGINT as at the end of its -d, done() hook included.
        kill(wrk_pid, Signal::SIGINT).context("stop wrk with SIGINT")
    })();
    if restarted.is_err() {
        let _ = wrk.kill();
    }
    let mut out = String::new();
    if let Some(mut s) = wrk.stdout.take() {
        s.read_to_string(&mut out).context("read wrk's output")?;
    }
    let st = wrk.wait().context("wait for wrk")?;
    let load_ms = load_start.elapsed().as_millis();
    let final_stop = nginx.take().map(|n| n.stop(a.stop_by, wait)).transpose();
    restarted?;
    final_stop?;
    if !st.success() {
        let err = fs::read_to_string(&wrk_err).unwrap_or_default();
        bail!("wrk failed ({st}): {err}{out}");
    }

    let mut o = NginxOutcome::new(a, migrate_req, WrkSummary::parse(&out)?);
    o.row.restarts = restarts;
    o.exit_ms = exit_ms;
    o.start_ms = start_ms;
    o.load_ms = load_ms;
    o.row.migrate_req_success = moved(&before, "TCPMigrateReqSuccess");
    o.migrate_req_failure = moved(&before, "TCPMigrateReqFailure");
    o.parked = moved(&before, "TCPMigrateReqParked");
    o.adopted = moved(&before, "TCPMigrateReqAdopted");
    o.park_expired = moved(&before, "TCPMigrateReqParkExpired");
    if a.dir.is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: NginxArgs,
    }

    #[test]
    fn wrk_summary_line() {
        let out = "Running 6s test @ http://127.0.0.1:8088/\n  \
                   Socket errors: connect 0, read 4, write 128, timeout 9\n\
                   {\"requests\":1000,\"connect\":1,\"read\":4,\"write\":128,\
                   \"status\":2,\"timeout\":9,\"late\":3,\"failed\":2,\"stalled\":1}\n";
        let s = WrkSummary::parse(out).unwrap();
        // Late responses are among the requests: not attempted twice, and
        // wrk's repeated timeout count plays no part.
        assert_eq!(s.attempted(), 1000 + 1 + 4 + 128 + 1);
        assert_eq!(s.served(), 995);
        assert_eq!(s.lost(), 3 + 2 + 1 + 4 + 128 + 1);
        assert!(WrkSummary::parse("Running 6s test\n").is_err());
        let bad = "{\"requests\":3,\"connect\":0,\"read\":0,\"write\":0,\"status\":0,\
                   \"timeout\":0,\"late\":2,\"failed\":2,\"stalled\":0}\n";
        assert!(WrkSummary::parse(bad).is_err());
    }

    #[test]
    fn row_columns_add_up_to_lost() {
        let a = Cli::parse_from(["x"]).a;
        for (late, failed, timeout) in [(0, 0, 0), (2, 3, 7), (5, 1, 0), (4, 4, 4)] {
            let wrk = WrkSummary {
                requests: 100,
                connect: 1,
                read: 2,
                write: 3,
                status: failed,
                timeout,
                late,
                failed,
                stalled: 1,
            };
            let o = NginxOutcome::new(&a, Some(1), wrk);
            let r = &o.row;
            assert_eq!(r.reset + r.refused + r.timeout + r.other, r.lost, "{wrk:?}");
            assert_eq!(r.served + r.lost, r.attempted, "{wrk:?}");
            assert_eq!(r.served, 100 - late - failed, "{wrk:?}");
        }
    }

    #[test]
    fn hooks_watch_every_thread() {
        let l = report_lua(7);
        assert_eq!(l.matches("> 7 then").count(), 2, "{l}");
        for key in ["late", "failed", "stalled"] {
            assert!(l.contains(&format!("\"{key}\":%d")), "{l}");
        }
        assert!(l.contains("return wrk.format()"), "{l}");
    }

    #[test]
    fn conf_listens_with_reuseport_where_asked() {
        let a = Cli::parse_from(["x", "--family", "6", "--port", "9000", "--workers", "3"]).a;
        let c = nginx_conf(&a, Path::new("/tmp/d"));
        assert!(
            c.contains("listen [::1]:9000 reuseport backlog=511;"),
            "{c}"
        );
        assert!(c.contains("worker_processes 3;"));
        assert!(c.contains("pid /tmp/d/nginx.pid;"));
        assert!(c.contains("keepalive_timeout 0;"));
    }

    /// `storm summary` reads an nginx result as it reads a storm's.
    #[test]
    fn json_reads_back_as_a_row() {
        let a = Cli::parse_from(["x", "--family", "6", "--label", "L"]).a;
        let wrk = WrkSummary {
            requests: 10,
            write: 2,
            late: 1,
            ..Default::default()
        };
        let mut o = NginxOutcome::new(&a, Some(1), wrk);
        o.row.restarts = 2;
        let f = std::env::temp_dir().join(format!("nginx-row-{}.json", std::process::id()));
        o.write_json(&f).unwrap();
        let r = Row::read(&f).unwrap();
        let text = fs::read_to_string(&f).unwrap();
        fs::remove_file(&f).unwrap();
        assert_eq!(r.label.as_deref(), Some("L"));
        assert_eq!(
            (
                r.family,
                r.attempted,
                r.served,
                r.lost,
                r.refused,
                r.timeout,
                r.restarts
            ),
            (6, 12, 9, 3, 2, 1, 2)
        );
        // Flattened: the row's fields sit at the top, not under "row".
        assert!(!text.contains("\"row\""), "{text}");
    }

    #[test]
    fn lossless_needs_every_restart() {
        let a = Cli::parse_from(["x", "--restarts", "2"]).a;
        let wrk = WrkSummary {
            requests: 10,
            ..Default::default()
        };
        let mut o = NginxOutcome::new(&a, Some(1), wrk);
        o.row.restarts = 1;
        assert!(o.verdict(Expect::Lossless, 2).is_err());
        o.row.restarts = 2;
        assert!(o.verdict(Expect::Lossless, 2).is_ok());
        assert!(o.verdict(Expect::Loss, 2).is_err());
    }
}
