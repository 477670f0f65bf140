// SPDX-License-Identifier: GPL-2.0

//! Host build of the reuseport migration policy, for `cargo test`.
//!
//! The kernel builds `policy.rs` as a module of `reuseport_migrate.rs`; here it
//! is the same file under `no_std`, so what the tests check is what the kernel
//! runs.

#![no_std]

#[path = "policy.rs"]
pub mod policy;
