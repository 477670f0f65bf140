// SPDX-License-Identifier: GPL-2.0
//! Allocation failures injected through the kernel's fault-injection
//! debugfs controls (`failslab`, `fail_page_alloc`), only on the debug
//! kernel flavour that has them (`FAULT_INJECTION_DEBUG_FS` with the
//! stacktrace filter).
//!
//! A failure is confined to code called from a chosen range of kernel text
//! (`require-start`/`require-end`: some frame of the allocating stack lies
//! in it), so a test can fail, say, the one allocation that
//! `inet_csk_listen_stop()` makes for a migration and nothing else, and a
//! stress can fail allocations on the migration paths only.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

const DEBUGFS: &str = "/sys/kernel/debug";

/// Mounts debugfs at its usual place unless it is there already.
pub fn mount_debugfs() -> Result<()> {
    if Path::new(DEBUGFS).join("kmemleak").exists() || Path::new(DEBUGFS).join("failslab").exists()
    {
        return Ok(());
    }
    crate::harness::mount_pseudo_fs("debugfs", DEBUGFS)
}

/// Whether the running kernel has `which` with the stacktrace filter (the
/// debug flavour does; the plain test kernel has no debugfs at all).
pub fn available(which: Injector) -> bool {
    mount_debugfs().is_ok() && which.dir().join("require-start").exists()
}

/// The text symbols of the running kernel, sorted by address.
pub struct Kallsyms(Vec<(u64, String)>);

impl Kallsyms {
    pub fn read() -> Result<Kallsyms> {
        let text = fs::read_to_string("/proc/kallsyms").context("read /proc/kallsyms")?;
        let mut v: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let addr = u64::from_str_radix(w.next()?, 16).ok()?;
                let kind = w.next()?;
                let name = w.next()?;
                matches!(kind, "t" | "T").then(|| (addr, name.to_string()))
            })
            .collect();
        if v.iter().all(|(a, _)| *a == 0) {
            bail!("/proc/kallsyms shows no addresses (kptr_restrict?)");
        }
        v.sort();
        Ok(Kallsyms(v))
    }

    /// `[start, end)` of function `name`: up to the next symbol's address.
    /// None when the kernel has no such symbol (inlined, or not built).
    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        let i = self.0.iter().position(|(_, n)| n == name)?;
        let start = self.0[i].0;
        let end = self.0[i + 1..]
            .iter()
            .map(|(a, _)| *a)
            .find(|&a| a > start)?;
        Some((start, end))
    }

    /// The first of `names` the kernel has, else the last of them (so that
    /// what is looked up next fails naming it). The series makes TCP call
    /// `_migrate` variants of functions the base kernel has under the old
    /// names: the tests name both, newest first.
    pub fn first_of<'a>(&self, names: &[&'a str]) -> &'a str {
        names
            .iter()
            .copied()
            .find(|n| self.range(n).is_some())
            .or_else(|| names.last().copied())
            .unwrap_or_default()
    }

    /// The smallest range holding every one of `names` that exists; at least
    /// one must.
    pub fn span(&self, names: &[&str]) -> Result<(u64, u64)> {
        let found: Vec<(u64, u64)> = names.iter().filter_map(|n| self.range(n)).collect();
        let start = found.iter().map(|r| r.0).min();
        let end = found.iter().map(|r| r.1).max();
        match (start, end) {
            (Some(s), Some(e)) => Ok((s, e)),
            _ => Err(anyhow!("kernel has none of the functions {names:?}")),
        }
    }
}

/// Which injector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injector {
    /// kmem_cache_alloc() and kmalloc(): request sockets, skbs, children.
    Slab,
    /// The page allocator under them.
    PageAlloc,
}

impl Injector {
    fn dir(self) -> PathBuf {
        Path::new(DEBUGFS).join(match self {
            Injector::Slab => "failslab",
            Injector::PageAlloc => "fail_page_alloc",
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Injector::Slab => "failslab",
            Injector::PageAlloc => "fail_page_alloc",
        }
    }
}

/// What to fail.
pub struct Plan {
    /// Percent of the calls that qualify (1..=100).
    pub probability: u32,
    /// Fail at most this many times.
    pub times: u32,
    /// Only in tasks that asked for it (`/proc/thread-self/make-it-fail`);
    /// a failure in softirq context never qualifies then.
    pub task_only: bool,
    /// Kernel text some frame of the allocating stack must lie in.
    pub within: (u64, u64),
    /// Kernel text no frame of it may lie in (0, 0: none).
    pub except: (u64, u64),
    /// failslab only: fail allocations from these slab caches only
    /// (`cache-filter`; caches the kernel lacks are left out). Empty: any
    /// cache, kmemleak's own metadata included.
    pub caches: &'static [&'static str],
}

const SLAB_SYSFS: &str = "/sys/kernel/slab";

/// One injector configured by a [`Plan`], switched off again on drop.
pub struct Injection {
    which: Injector,
    times: u32,
    caches: Vec<PathBuf>,
}

impl Injection {
    /// None when the kernel has no such injector (not the debug flavour).
    pub fn start(which: Injector, plan: &Plan) -> Result<Option<Injection>> {
        mount_debugfs()?;
        let dir = which.dir();
        if !dir.join("require-start").exists() {
            return Ok(None);
        }
        let mut inj = Injection {
            which,
            times: plan.times,
            caches: Vec::new(),
        };
        // Off while it is set up, so no half-configured state ever fails.
        inj.write("probability", "0")?;
        inj.write("verbose", "0")?;
        inj.write("space", "0")?;
        inj.write("interval", "1")?;
        inj.write("stacktrace-depth", "32")?;
        inj.write("require-start", &plan.within.0.to_string())?;
        inj.write("require-end", &plan.within.1.to_string())?;
        inj.write("reject-start", &plan.except.0.to_string())?;
        inj.write("reject-end", &plan.except.1.to_string())?;
        inj.write("task-filter", if plan.task_only { "Y" } else { "N" })?;
        // Atomic allocations are the ones on these paths; sleeping ones are
        // not skipped either.
        inj.write("ignore-gfp-wait", "N")?;
        if which == Injector::PageAlloc {
            inj.write("ignore-gfp-highmem", "N")?;
            inj.write("min-order", "0")?;
        }
        if which == Injector::Slab {
            for c in plan.caches {
                let flag = Path::new(SLAB_SYSFS).join(c).join("failslab");
                if flag.exists() {
                    fs::write(&flag, "1")
                        .with_context(|| format!("write 1 to {}", flag.display()))?;
                    inj.caches.push(flag);
                }
            }
            if !plan.caches.is_empty() && inj.caches.is_empty() {
                bail!("none of the slab caches {:?} exists", plan.caches);
            }
            inj.write(
                "cache-filter",
                if plan.caches.is_empty() { "N" } else { "Y" },
            )?;
        }
        inj.write("times", &plan.times.to_string())?;
        inj.write("probability", &plan.probability.min(100).to_string())?;
        Ok(Some(inj))
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.which.dir().join(file);
        fs::write(&path, value).with_context(|| format!("write {value:?} to {}", path.display()))
    }

    /// Failures injected so far (the kernel counts `times` down).
    pub fn injected(&self) -> Result<u64> {
        let path = self.which.dir().join("times");
        let left: i64 = fs::read_to_string(&path)
            .with_context(|| format!("read {}", path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parse {}", path.display()))?;
        Ok(u64::from(self.times).saturating_sub(left.max(0) as u64))
    }
}

impl Drop for Injection {
    fn drop(&mut self) {
        let _ = self.write("probability", "0");
        let _ = self.write("times", "1");
        let _ = self.write("task-filter", "N");
        if self.which == Injector::Slab {
            let _ = self.write("cache-filter", "N");
        }
        for flag in &self.caches {
            let _ = fs::write(flag, "0");
        }
    }
}

/// Lets fault injection with `task_only` fail allocations of the calling
/// thread (and only of it) while the value lives.
pub struct FailThisThread;

impl FailThisThread {
    pub fn new() -> Result<FailThisThread> {
        fs::write("/proc/thread-self/make-it-fail", "1")
            .context("write 1 to /proc/thread-self/make-it-fail")?;
        Ok(FailThisThread)
    }
}

impl Drop for FailThisThread {
    fn drop(&mut self) {
        let _ = fs::write("/proc/thread-self/make-it-fail", "0");
    }
}
