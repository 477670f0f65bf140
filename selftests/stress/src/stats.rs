// SPDX-License-Identifier: GPL-2.0
//! What the stress did, counted by name: operations, client outcomes,
//! server outcomes, injected faults. The report prints them all, so the
//! coverage of a run can be read off it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<String, u64>>,
    first_errors: Mutex<BTreeMap<String, Vec<String>>>,
}

impl Stats {
    pub fn add(&self, key: &str, n: u64) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(key.to_string()).or_insert(0) += n;
    }

    pub fn bump(&self, key: &str) {
        self.add(key, 1);
    }

    /// Counts `key` and keeps the first few error texts seen for it.
    pub fn error(&self, key: &str, e: &anyhow::Error) {
        const KEEP: usize = 5;
        self.bump(key);
        let mut m = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(key.to_string()).or_default();
        if v.len() < KEEP {
            v.push(format!("{e:#}"));
        }
    }

    pub fn get(&self, key: &str) -> u64 {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key).copied().unwrap_or(0)
    }

    /// The sum of every counter whose name starts with `prefix`.
    pub fn sum(&self, prefix: &str) -> u64 {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn first_errors(&self) -> BTreeMap<String, Vec<String>> {
        self.first_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Set once, read by every worker: the run's time or count is up.
#[derive(Default)]
pub struct Stop(AtomicBool);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
