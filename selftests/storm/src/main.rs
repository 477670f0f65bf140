// SPDX-License-Identifier: GPL-2.0
//! storm: rolling-restart load generator for SO_REUSEPORT TCP listeners.
//!
//! `storm run` enters a fresh network namespace, sets
//! `net.ipv4.tcp_migrate_req` there, starts N worker processes that each own
//! one SO_REUSEPORT listener on the same loopback port, drives C client
//! threads against the port and restarts the workers one after another the
//! way nginx/HAProxy reload: the old worker close()s its listener at once
//! without draining its accept queue, finishes what it accepted and exits.
//! Every client attempt is classified exactly once (served, reset, refused,
//! timeout, other) and the TcpExt TCPMigrateReq{Success,Failure} deltas of
//! the namespace are reported. `storm check` runs the same storm and asserts
//! the outcome (`--expect-lossless` or `--expect-loss`).

use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};
use storm::{netns, nginx, report, supervisor, worker, RunArgs, EXIT_SKIP};

#[derive(Parser)]
#[command(
    name = "storm",
    version,
    about = "Rolling-restart storm against an SO_REUSEPORT listener group (tcp_migrate_req)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one storm in a fresh network namespace and print the counts.
    Run(RunArgs),
    /// Run one storm and exit non-zero unless the outcome is as expected.
    Check(CheckArgs),
    /// Restart a real nginx under wrk's HTTP load and count the failed
    /// requests (needs Debian's nginx-light and wrk).
    Nginx(nginx::NginxArgs),
    /// Print one Markdown table of the storms whose `--json` results are given.
    Summary {
        /// Result files of `storm run --json`, one row each, in this order.
        files: Vec<std::path::PathBuf>,
    },
    /// One server worker (started by the supervisor; not for direct use).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(Args, Clone, Debug)]
#[command(group(ArgGroup::new("expect").required(true).args(["expect_lossless", "expect_loss"])))]
pub struct CheckArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Fail unless reset+refused+timeout+other == 0, restarts >= 1, served > 0.
    #[arg(long)]
    pub expect_lossless: bool,
    /// Fail unless at least one connection was lost (and restarts >= 1).
    #[arg(long)]
    pub expect_loss: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Worker(a) => match worker::run(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("storm worker {}: {e:#}", a.id);
                ExitCode::FAILURE
            }
        },
        Cmd::Run(a) => storm_main(&a, None),
        Cmd::Nginx(a) => nginx_main(&a),
        Cmd::Summary { files } => match storm::summary::run(&files) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("storm summary: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Check(c) => {
            let expect = if c.expect_lossless {
                report::Expect::Lossless
            } else {
                report::Expect::Loss
            };
            storm_main(&c.run, Some(expect))
        }
    }
}

fn storm_main(args: &RunArgs, expect: Option<report::Expect>) -> ExitCode {
    // Still single-threaded here: unshare(CLONE_NEWNET) must come first.
    let result = match enter_configured(args.park_grace_ms, args.sysctl) {
        Ok(v) => supervisor::run_storm(args, v),
        Err(code) => return code,
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            eprintln!("storm: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", outcome.summary_line());
    if let Some(path) = &args.json {
        if let Err(e) = outcome.write_json(path) {
            eprintln!("storm: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = outcome.check_invariant() {
        eprintln!("storm: BUG: {e:#}");
        return ExitCode::FAILURE;
    }
    for (cause, n) in &outcome.tally.causes {
        eprintln!("storm: lost {n}: {cause}");
    }
    if outcome.lost() > 0 {
        let moved: Vec<String> = outcome
            .tcp_ext_moved
            .iter()
            .map(|(k, d)| format!("{k}={d}"))
            .collect();
        eprintln!("storm: TcpExt moved: {}", moved.join(" "));
    }
    for err in &outcome.errors {
        eprintln!("storm: error: {err}");
    }
    match expect {
        None if outcome.errors.is_empty() => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
        Some(x) => print_verdict("storm check", outcome.verdict(x)),
    }
}

/// The last line of a checked run, in the form run-in-vm's TAP lines quote:
/// `WHAT: PASS: ...` on stdout or `WHAT: FAIL: ...` on stderr.
fn print_verdict(what: &str, verdict: Result<String, String>) -> ExitCode {
    match verdict {
        Ok(msg) => {
            println!("{what}: PASS: {msg}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("{what}: FAIL: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the private namespace as `storm run` does: Err(exit code) if
/// the storm cannot run (a missing sysctl is a skip).
fn enter_configured(
    park_grace_ms: u64,
    sysctl: storm::SysctlMode,
) -> Result<Option<u32>, ExitCode> {
    if let Err(e) = netns::enter_private() {
        eprintln!("storm: {e:#}");
        return Err(ExitCode::FAILURE);
    }
    if park_grace_ms > 0 {
        match netns::set_park_grace(park_grace_ms) {
            Ok(()) => {}
            Err(netns::SysctlError::Missing) => {
                eprintln!("storm: SKIP: this kernel has no net.ipv4.tcp_migrate_req_grace_ms");
                return Err(ExitCode::from(EXIT_SKIP));
            }
            Err(netns::SysctlError::Other(e)) => {
                eprintln!("storm: {e:#}");
                return Err(ExitCode::FAILURE);
            }
        }
    }
    match netns::set_migrate_req(sysctl) {
        Ok(v) => Ok(v),
        Err(netns::SysctlError::Missing) => {
            eprintln!(
                "storm: SKIP: /proc/sys/net/ipv4/tcp_migrate_req does not exist in this kernel"
            );
            Err(ExitCode::from(EXIT_SKIP))
        }
        Err(netns::SysctlError::Other(e)) => {
            eprintln!("storm: {e:#}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn nginx_main(a: &nginx::NginxArgs) -> ExitCode {
    let migrate_req = match enter_configured(a.park_grace_ms, a.sysctl) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let o = match nginx::run(a, migrate_req) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("storm nginx: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", o.summary_line());
    if let Some(path) = &a.json {
        if let Err(e) = o.write_json(path) {
            eprintln!("storm nginx: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    match a.expect() {
        None => ExitCode::SUCCESS,
        Some(x) => print_verdict("storm nginx check", o.verdict(x, a.restarts)),
    }
}
