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

mod client;
mod netns;
mod report;
mod supervisor;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Exit status for "cannot run here" (kselftest's KSFT_SKIP).
pub const EXIT_SKIP: u8 = 4;

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
    /// One server worker (started by the supervisor; not for direct use).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SysctlMode {
    /// Write 0: queued children of a closing listener are reset.
    #[value(name = "0")]
    Off,
    /// Write 1: queued children migrate to another listener of the group.
    #[value(name = "1")]
    On,
    /// Leave the namespace's value as it is.
    Keep,
}

impl SysctlMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SysctlMode::Off => "0",
            SysctlMode::On => "1",
            SysctlMode::Keep => "keep",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Family {
    /// IPv4, 127.0.0.1
    #[value(name = "4")]
    V4,
    /// IPv6, ::1
    #[value(name = "6")]
    V6,
}

impl Family {
    pub fn as_num(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    pub fn addr(self, port: u16) -> std::net::SocketAddr {
        match self {
            Family::V4 => (std::net::Ipv4Addr::LOCALHOST, port).into(),
            Family::V6 => (std::net::Ipv6Addr::LOCALHOST, port).into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// Start the replacement, wait until it listens, then stop the old worker.
    StartFirst,
    /// Stop the old worker (wait until its listener is closed), then start
    /// the replacement. The other N-1 listeners stay up meanwhile.
    StopFirst,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::StartFirst => "start-first",
            Order::StopFirst => "stop-first",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// net.ipv4.tcp_migrate_req to set in the namespace.
    #[arg(long, value_enum, default_value = "keep")]
    pub sysctl: SysctlMode,
    /// Address family (loopback only).
    #[arg(long, value_enum, default_value = "4")]
    pub family: Family,
    /// Number of worker processes (one listener each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Number of client threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub clients: u32,
    /// Length of the load phase.
    #[arg(long, default_value_t = 4000)]
    pub duration_ms: u64,
    /// Interval between two restarts of the rolling restart (0: never).
    #[arg(long, default_value_t = 300)]
    pub restart_every_ms: u64,
    /// Whether the replacement starts before or after the old worker stops.
    #[arg(long, value_enum, default_value = "start-first")]
    pub order: Order,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Port of the listener group (in the private namespace).
    #[arg(long, default_value_t = 5555, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// listen() backlog of each worker.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,
    /// Time a worker spends on each request before answering (simulated
    /// work; keeps connections queued behind busy workers).
    #[arg(long, default_value_t = 20)]
    pub work_ms: u64,
    /// Client timeout for connect, and again for request+response; also
    /// the workers' per-connection I/O timeout.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Longest wait for a new worker to report that it listens.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ready_timeout_ms: u64,
    /// Longest wait for a stopped worker to close its listener, and again
    /// to exit, before it is SIGKILLed.
    #[arg(long, default_value_t = 2500)]
    pub grace_ms: u64,
    /// Log every restart on stderr.
    #[arg(short, long)]
    pub verbose: bool,
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
    if let Err(e) = netns::enter_private() {
        eprintln!("storm: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match netns::set_migrate_req(args.sysctl) {
        Ok(v) => supervisor::run_storm(args, v),
        Err(netns::SysctlError::Missing) => {
            eprintln!(
                "storm: SKIP: /proc/sys/net/ipv4/tcp_migrate_req does not exist in this kernel"
            );
            return ExitCode::from(EXIT_SKIP);
        }
        Err(netns::SysctlError::Other(e)) => Err(e),
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
    for err in &outcome.errors {
        eprintln!("storm: error: {err}");
    }
    match expect {
        None if outcome.errors.is_empty() => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
        Some(x) => match outcome.verdict(x) {
            Ok(msg) => {
                println!("storm check: PASS: {msg}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("storm check: FAIL: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}
