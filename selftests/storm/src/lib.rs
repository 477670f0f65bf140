// SPDX-License-Identifier: GPL-2.0
//! storm as a library: the restart-storm load generator for SO_REUSEPORT
//! TCP listeners (`tcp_migrate_req`), used by the `storm` binary and by the
//! benchmark (`selftests/bench`).
//!
//! [`supervisor::run_storm`] runs one storm in the current network
//! namespace (see [`netns::enter_private`]): N worker processes that each
//! own one SO_REUSEPORT listener on the same loopback port, C client
//! threads, and a restart [`Pattern`] applied to the workers. Every client
//! attempt is classified exactly once (served, reset, refused, timeout,
//! other); see [`report::Outcome`]. The worker processes are the calling
//! executable re-run with `worker` as its first argument, which must call
//! [`worker::run`].

pub mod client;
pub mod netns;
pub mod nginx;
pub mod report;
pub mod summary;
pub mod supervisor;
pub mod worker;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Exit status for "cannot run here" (kselftest's KSFT_SKIP).
pub const EXIT_SKIP: u8 = 4;

/// What to do with `net.ipv4.tcp_migrate_req` of the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SysctlMode {
    /// Write 0: queued children of a closing listener are reset.
    #[value(name = "0")]
    Off,
    /// Write 1: queued children migrate to another listener of the group.
    #[value(name = "1")]
    On,
    /// Write 2: migrate, choosing a target with room (load-aware; only the
    /// patched kernel accepts it, others reject it with EINVAL).
    #[value(name = "2")]
    LoadAware,
    /// Leave the namespace's value as it is.
    Keep,
}

impl SysctlMode {
    /// The value as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SysctlMode::Off => "0",
            SysctlMode::On => "1",
            SysctlMode::LoadAware => "2",
            SysctlMode::Keep => "keep",
        }
    }
}

/// Address family of the loopback listener group.
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
    /// 4 or 6.
    pub fn as_num(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    /// The loopback address of this family with `port`.
    pub fn addr(self, port: u16) -> std::net::SocketAddr {
        match self {
            Family::V4 => (std::net::Ipv4Addr::LOCALHOST, port).into(),
            Family::V6 => (std::net::Ipv6Addr::LOCALHOST, port).into(),
        }
    }
}

/// Order of the two halves of one worker restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// Start the replacement, wait until it listens, then stop the old worker.
    StartFirst,
    /// Stop the old worker (wait until its listener is closed), then start
    /// the replacement. The other N-1 listeners stay up meanwhile.
    StopFirst,
}

impl Order {
    /// The value as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Order::StartFirst => "start-first",
            Order::StopFirst => "stop-first",
        }
    }
}

/// What happens to the workers during the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    /// Every `--restart-every-ms` the next slot (0, 1, …, N-1, 0, …) is
    /// restarted in `--order`, at most `--restarts` times (0: no limit).
    Rolling,
    /// Every `--restart-every-ms` one worker is stopped and not replaced,
    /// until N/2 (at least 1) remain.
    ScaleDown,
    /// After `--restart-every-ms`, every worker is stopped (all listeners
    /// closed), then after `--gap-ms` N new workers are started: once, or
    /// `--restarts` times, every `--restart-every-ms`.
    StopStart,
    /// At the start of the load worker 0 stops accepting (keeps its
    /// listener open, its accept queue fills); then slots 1..N-1 are
    /// restarted in turn like `rolling`, once each. Needs N >= 3 for a
    /// live target to exist besides the stalled one.
    Stalled,
}

impl Pattern {
    /// The value as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Rolling => "rolling",
            Pattern::ScaleDown => "scale-down",
            Pattern::StopStart => "stop-start",
            Pattern::Stalled => "stalled",
        }
    }
}

/// How a worker is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StopBy {
    /// Asked on its control pipe: it closes its listener and exits, as a
    /// server does on a reload.
    Close,
    /// SIGTERM, which the worker does not catch (`systemctl stop` of a
    /// server without a handler): the kernel closes its listener at exit.
    Term,
    /// SIGKILL (systemd's stop timeout, the OOM killer, a crash): the
    /// kernel closes its listener at exit.
    Kill,
}

impl StopBy {
    /// The value as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StopBy::Close => "close",
            StopBy::Term => "term",
            StopBy::Kill => "kill",
        }
    }
}

/// Parameters of one storm (the `storm run` command line).
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
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub duration_ms: u64,
    /// Interval between two restarts (0: never restart).
    #[arg(long, default_value_t = 300)]
    pub restart_every_ms: u64,
    /// Whether the replacement starts before or after the old worker stops.
    #[arg(long, value_enum, default_value = "start-first")]
    pub order: Order,
    /// What happens to the workers during the load.
    #[arg(long, value_enum, default_value = "rolling")]
    pub pattern: Pattern,
    /// Most restarts in the `rolling` pattern (0: as many as fit); number
    /// of stop-all-then-start cycles in `stop-start` (0: one).
    #[arg(long, default_value_t = 0)]
    pub restarts: u64,
    /// How a restart stops a worker. With `term` or `kill`, whatever the
    /// worker had accepted and not answered dies with it: `--hold-ms`
    /// first lets it finish those, so that only what the kernel holds
    /// (its queue, its handshakes) is at stake.
    #[arg(long, value_enum, default_value = "close")]
    pub stop_by: StopBy,
    /// `stop-start`: time between the last listener closing and the first
    /// new one starting.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub gap_ms: u64,
    /// net.ipv4.tcp_migrate_req_grace_ms to set in the namespace (0: leave
    /// it): how long the last closed listener is parked for a new one.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub park_grace_ms: u64,
    /// Before a restart closes a worker's listener, the worker stops
    /// accepting for this long (0: it closes at once), so the close always
    /// finds connections queued: migrated with migration on, reset
    /// without it, whatever the timing of the guest.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub hold_ms: u64,
    /// New connections per second over all client threads (0: each
    /// thread connects again as soon as its previous attempt ended).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rate: u32,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// What this storm is, in the JSON and in `storm summary` (for example
    /// the kernel and the restart it shows).
    #[arg(long)]
    pub label: Option<String>,
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
    /// Longest wait for a new worker to report that it listens. It catches
    /// a worker that hangs, not a slow one: a TCG guest under a full
    /// client load has taken more than 5 s to start one.
    #[arg(long, default_value_t = 20000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ready_timeout_ms: u64,
    /// Longest wait for a stopped worker to close its listener, and again
    /// to exit, before it is SIGKILLed.
    #[arg(long, default_value_t = 2500)]
    pub grace_ms: u64,
    /// Log every restart on stderr.
    #[arg(short, long)]
    pub verbose: bool,
}
