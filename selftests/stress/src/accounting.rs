// SPDX-License-Identifier: GPL-2.0
//! What must be back where it was after the run: sockets and request
//! sockets by slab cache, orphans, and kmemleak's verdict.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use migrate_tests::harness::slab_objects_of;

// The tests' reading of /proc/thread-self/net/sockstat: one line as
// name -> value, e.g. `TCP` -> {inuse, orphan, tw, alloc, mem}.
pub use migrate_tests::harness::sockstat;

/// The caches whose objects the migration paths allocate and free.
pub const CACHES: &[&str] = &[
    "request_sock_TCP",
    "request_sock_TCPv6",
    "TCP",
    "TCPv6",
    "tw_sock_TCP",
    "tw_sock_TCPv6",
];

/// Objects in use per cache of [`CACHES`], after the caches were shrunk
/// (which also empties KASAN's quarantine of them, so freed objects do
/// not count). Empty when the kernel does not show them (no SLUB_DEBUG).
pub fn slab_objects() -> Result<BTreeMap<String, u64>> {
    slab_objects_of(CACHES)
}

const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";

/// Whether the kernel has kmemleak (debugfs must be mounted).
pub fn kmemleak_present() -> bool {
    Path::new(KMEMLEAK).exists()
}

/// Forgets what kmemleak suspected so far: what it reports later is new.
pub fn kmemleak_clear() -> Result<()> {
    fs::write(KMEMLEAK, "clear").context("write clear to kmemleak")
}

/// Scans twice (an object is reported once it was unreferenced in a scan
/// and is old enough) and returns the reports.
pub fn kmemleak_scan() -> Result<Vec<String>> {
    for _ in 0..2 {
        fs::write(KMEMLEAK, "scan").context("write scan to kmemleak")?;
    }
    let text = fs::read_to_string(KMEMLEAK).context("read kmemleak")?;
    Ok(text
        .split("unreferenced object")
        .skip(1)
        .map(|r| {
            format!(
                "unreferenced object{}",
                r.lines().take(12).collect::<Vec<_>>().join("\n")
            )
        })
        .collect())
}
