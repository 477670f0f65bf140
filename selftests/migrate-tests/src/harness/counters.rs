// SPDX-License-Identifier: GPL-2.0
//! The sysctls a test sets and the TcpExt counters it reads back, all per
//! network namespace: the kernel's own account of what migrated and why.

use std::collections::HashMap;
use std::fs;
use std::io;

use anyhow::{anyhow, bail, Context, Result};

pub const MIGRATE_REQ: &str = "net.ipv4.tcp_migrate_req";

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// One write(2) of `value` to a sysctl of the current network namespace.
pub fn write_sysctl(name: &str, value: &str) -> io::Result<()> {
    fs::write(sysctl_path(name), value)
}

pub fn read_sysctl(name: &str) -> Result<String> {
    let path = sysctl_path(name);
    let s = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    Ok(s.trim().to_string())
}

/// Writes a sysctl of the current network namespace and reads it back.
pub fn set_sysctl(name: &str, value: &str) -> Result<()> {
    write_sysctl(name, value).with_context(|| format!("write {value} to {}", sysctl_path(name)))?;
    let back = read_sysctl(name)?;
    if back != value {
        bail!("{name}: wrote {value}, reads back {back}");
    }
    Ok(())
}

pub fn set_migrate_req(on: bool) -> Result<()> {
    set_sysctl(MIGRATE_REQ, if on { "1" } else { "0" })
}

/// TcpExt counters of the current network namespace.
#[derive(Clone, Debug)]
pub struct TcpExt(HashMap<String, u64>);

pub const MIGRATE_OK: &str = "TCPMigrateReqSuccess";
pub const MIGRATE_FAIL: &str = "TCPMigrateReqFailure";
pub const SYNACK_RETRANS: &str = "TCPSynRetrans";
pub const TFO_PASSIVE: &str = "TCPFastOpenPassive";
pub const LISTEN_OVERFLOWS: &str = "ListenOverflows";
pub const LISTEN_DROPS: &str = "ListenDrops";

impl TcpExt {
    pub fn read() -> Result<Self> {
        // thread-self: the namespace of this thread, whatever the process does.
        let text = fs::read_to_string("/proc/thread-self/net/netstat")
            .context("read /proc/thread-self/net/netstat")?;
        let mut lines = text.lines();
        let mut map = HashMap::new();
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            let (Some(("TcpExt", names)), Some(("TcpExt", values))) =
                (names.split_once(": "), values.split_once(": "))
            else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                map.insert(n.to_string(), v.parse().unwrap_or(u64::MAX));
            }
        }
        if map.is_empty() {
            bail!("no TcpExt section in /proc/thread-self/net/netstat");
        }
        Ok(TcpExt(map))
    }

    pub fn get(&self, name: &str) -> Result<u64> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("kernel has no TcpExt counter {name}"))
    }

    /// The same counters, all 0: what a new namespace started from.
    pub fn zeroed(&self) -> TcpExt {
        TcpExt(self.0.keys().map(|k| (k.clone(), 0)).collect())
    }

    /// How much `name` grew since `earlier`.
    pub fn since(&self, earlier: &TcpExt, name: &str) -> Result<u64> {
        Ok(self.get(name)?.wrapping_sub(earlier.get(name)?))
    }
}

/// Why a migration failed: the per-reason TcpExt counters the series adds
/// next to `TCPMigrateReqFailure` (they partition it), and the `result=`
/// name the `tcp:tcp_reuseport_migrate` tracepoint gives each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    NoListener,
    Disabled,
    Bpf,
    NoMem,
    QueueFull,
    TargetClosed,
    Expired,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NoListener,
        Reason::Disabled,
        Reason::Bpf,
        Reason::NoMem,
        Reason::QueueFull,
        Reason::TargetClosed,
        Reason::Expired,
        Reason::Other,
    ];

    pub fn counter(self) -> &'static str {
        match self {
            Reason::NoListener => "TCPMigrateReqFailNoListener",
            Reason::Disabled => "TCPMigrateReqFailDisabled",
            Reason::Bpf => "TCPMigrateReqFailBpf",
            Reason::NoMem => "TCPMigrateReqFailNoMem",
            Reason::QueueFull => "TCPMigrateReqFailQueueFull",
            Reason::TargetClosed => "TCPMigrateReqFailTargetClosed",
            Reason::Expired => "TCPMigrateReqFailExpired",
            Reason::Other => "TCPMigrateReqFailOther",
        }
    }

    pub fn traced(self) -> &'static str {
        match self {
            Reason::NoListener => "no_listener",
            Reason::Disabled => "disabled",
            Reason::Bpf => "bpf",
            Reason::NoMem => "nomem",
            Reason::QueueFull => "queue_full",
            Reason::TargetClosed => "target_closed",
            Reason::Expired => "expired",
            Reason::Other => "other",
        }
    }
}
