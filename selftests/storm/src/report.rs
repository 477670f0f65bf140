// SPDX-License-Identifier: GPL-2.0
//! The result of one storm: summary line, JSON, invariant, verdict.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::client::Tally;
use crate::summary::Row;
use crate::RunArgs;

/// What `storm check` expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nothing lost.
    Lossless,
    /// At least one attempt lost.
    Loss,
}

/// Everything one storm measured.
pub struct Outcome {
    /// The parameters it ran with.
    pub args: RunArgs,
    /// tcp_migrate_req in force during the run (None: the kernel lacks it).
    pub migrate_req: Option<u32>,
    /// The clients' counts.
    pub tally: Tally,
    /// Listener closes done as planned (restarts, retirements).
    pub restarts: u64,
    /// Planned restarts whose new worker did not start.
    pub restart_failures: u64,
    /// Connections the workers say they served (includes any whose client
    /// had already given up).
    pub worker_served: u64,
    /// Connections a worker failed to serve (its side).
    pub worker_errors: u64,
    /// Longest time a worker took from spawn to listening: how close the
    /// guest came to `--ready-timeout-ms`.
    pub slowest_start: Duration,
    /// TcpExt deltas over the run (None: the kernel lacks the counter).
    pub migrate_success: Option<u64>,
    /// See `migrate_success`.
    pub migrate_failure: Option<u64>,
    /// See `migrate_success`.
    pub listen_overflows: Option<u64>,
    /// See `migrate_success`.
    pub listen_drops: Option<u64>,
    /// Every TcpExt counter that moved during the run, by name: what a loss
    /// left behind in the kernel, printed when one is seen.
    pub tcp_ext_moved: Vec<(String, u64)>,
    /// Length of the load phase, in-flight attempts included.
    pub load_elapsed: Duration,
    /// Length of the whole run.
    pub elapsed: Duration,
    /// Supervisor problems (a worker that would not start, stop, or exit).
    pub errors: Vec<String>,
}

#[derive(Serialize)]
struct Json<'a> {
    #[serde(flatten)]
    row: Row,
    tcp_migrate_req: Option<u32>,
    workers: u32,
    clients: u32,
    order: &'a str,
    gap_ms: u64,
    park_grace_ms: u64,
    hold_ms: u64,
    stop_by: &'a str,
    rate: u32,
    achieved_rate: f64,
    connect_p50_us: Option<u32>,
    connect_p99_us: Option<u32>,
    backlog: i32,
    duration_ms: u64,
    restart_every_ms: u64,
    work_ms: u64,
    timeout_ms: u64,
    restart_failures: u64,
    migrate_req_failure: Option<u64>,
    listen_overflows: Option<u64>,
    listen_drops: Option<u64>,
    worker_served: u64,
    worker_errors: u64,
    max_latency_ms: u128,
    slowest_start_ms: u128,
    load_ms: u128,
    elapsed_ms: u128,
    causes: &'a std::collections::BTreeMap<String, u64>,
    errors: &'a [String],
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| v.to_string())
}

impl Outcome {
    /// Connections that were not served.
    pub fn lost(&self) -> u64 {
        let t = &self.tally;
        t.reset + t.refused + t.timeout + t.other
    }

    /// Attempts per second of the load phase.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.load_elapsed.as_secs_f64();
        if secs > 0.0 {
            self.tally.attempted as f64 / secs
        } else {
            0.0
        }
    }

    /// attempted == served + reset + refused + timeout + other.
    pub fn check_invariant(&self) -> Result<()> {
        let t = &self.tally;
        let sum = t.served + t.reset + t.refused + t.timeout + t.other;
        ensure!(
            t.attempted == sum,
            "attempted={} != served+reset+refused+timeout+other={sum}",
            t.attempted
        );
        Ok(())
    }

    fn counts(&self) -> String {
        let t = &self.tally;
        format!(
            "attempted={} served={} reset={} refused={} timeout={} other={} restarts={} \
             migrate_success={} migrate_failure={}",
            t.attempted,
            t.served,
            t.reset,
            t.refused,
            t.timeout,
            t.other,
            self.restarts,
            opt(self.migrate_success),
            opt(self.migrate_failure),
        )
    }

    /// One line with the counts and the parameters.
    pub fn summary_line(&self) -> String {
        let a = &self.args;
        format!(
            "storm: {} | sysctl={} family={} workers={} clients={} pattern={} order={} \
             duration_ms={} restart_every_ms={} work_ms={} restart_failures={} listen_overflows={} \
             worker_served={} max_latency_ms={} slowest_start_ms={} elapsed_ms={}",
            self.counts(),
            self.migrate_req
                .map_or_else(|| "n/a".into(), |v| v.to_string()),
            a.family.as_num(),
            a.workers,
            a.clients,
            a.pattern.as_str(),
            a.order.as_str(),
            a.duration_ms,
            a.restart_every_ms,
            a.work_ms,
            self.restart_failures,
            opt(self.listen_overflows),
            self.worker_served,
            self.tally.max_latency.as_millis(),
            self.slowest_start.as_millis(),
            self.elapsed.as_millis(),
        )
    }

    /// Write the outcome as one JSON object to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let a = &self.args;
        let t = &self.tally;
        let j = Json {
            row: Row {
                label: a.label.clone(),
                uname: Row::running_kernel(),
                family: a.family.as_num(),
                sysctl: a.sysctl.as_str().into(),
                pattern: a.pattern.as_str().into(),
                attempted: t.attempted,
                served: t.served,
                reset: t.reset,
                refused: t.refused,
                timeout: t.timeout,
                other: t.other,
                lost: self.lost(),
                restarts: self.restarts,
                migrate_req_success: self.migrate_success,
            },
            tcp_migrate_req: self.migrate_req,
            workers: a.workers,
            clients: a.clients,
            order: a.order.as_str(),
            gap_ms: a.gap_ms,
            park_grace_ms: a.park_grace_ms,
            hold_ms: a.hold_ms,
            stop_by: a.stop_by.as_str(),
            rate: a.rate,
            achieved_rate: self.achieved_rate(),
            connect_p50_us: t.connect_quantile_us(0.50),
            connect_p99_us: t.connect_quantile_us(0.99),
            backlog: a.backlog,
            duration_ms: a.duration_ms,
            restart_every_ms: a.restart_every_ms,
            work_ms: a.work_ms,
            timeout_ms: a.timeout_ms,
            restart_failures: self.restart_failures,
            migrate_req_failure: self.migrate_failure,
            listen_overflows: self.listen_overflows,
            listen_drops: self.listen_drops,
            worker_served: self.worker_served,
            worker_errors: self.worker_errors,
            max_latency_ms: t.max_latency.as_millis(),
            slowest_start_ms: self.slowest_start.as_millis(),
            load_ms: self.load_elapsed.as_millis(),
            elapsed_ms: self.elapsed.as_millis(),
            causes: &t.causes,
            errors: &self.errors,
        };
        let mut text = serde_json::to_string_pretty(&j)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Ok(message) if the outcome is what `expect` asks for.
    pub fn verdict(&self, expect: Expect) -> Result<String, String> {
        let t = &self.tally;
        let counts = self.counts();
        let mut why = Vec::new();
        if let Some(first) = self.errors.first() {
            // The first one in the verdict line: CI logs may keep only it.
            why.push(format!(
                "{} supervisor error(s), first: {first}",
                self.errors.len()
            ));
        }
        if self.restarts < 1 {
            why.push("no restart happened".to_string());
        }
        match expect {
            Expect::Lossless => {
                if self.lost() > 0 {
                    why.push(format!(
                        "{} connection(s) lost (reset={} refused={} timeout={} other={})",
                        self.lost(),
                        t.reset,
                        t.refused,
                        t.timeout,
                        t.other
                    ));
                }
                if t.served == 0 {
                    why.push("nothing served".to_string());
                }
            }
            Expect::Loss => {
                if self.lost() == 0 {
                    why.push("no connection was lost".to_string());
                }
            }
        }
        let what = match expect {
            Expect::Lossless => "expected lossless",
            Expect::Loss => "expected loss",
        };
        if why.is_empty() {
            Ok(format!("{what}: {counts}"))
        } else {
            Err(format!("{what}: {}: {counts}", why.join("; ")))
        }
    }
}
