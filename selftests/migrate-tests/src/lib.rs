// SPDX-License-Identifier: GPL-2.0
//! The pieces of the migration selftests, shared by the scenario runner
//! (`migrate-tests`) and the concurrent stress (`stress`): the harness
//! (network namespace, sysctls and counters, tracefs, sockets and clients),
//! fault injection, the BPF programs, and one module per scenario feature.

pub mod bpf;
pub mod faults;
pub mod harness;
pub mod scenarios;
