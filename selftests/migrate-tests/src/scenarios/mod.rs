// SPDX-License-Identifier: GPL-2.0
//! One function per scenario, each parametrised by address family. Every
//! scenario runs alone in a fresh network namespace (see main.rs), so the
//! TcpExt counters start from zero and sysctls set here die with it.
//!
//! Listener placement is made deterministic without luck: a new connection
//! can only land on a socket that listen()s at that moment, so the tests
//! connect while exactly the intended listener is listening (or steer SYNs
//! with the BPF program), and stop a listener only when the survivors are
//! the ones the test means to receive the migrated sockets.

mod bpf_migrate;
mod closed_before_queued;
mod closing_listener;
mod common;
mod fastopen;
mod in_flight;
mod isolation;
mod load_aware;
mod lost;
mod nomem;
mod park_ends;
mod park_races;
mod parked;
mod queued_children;
mod stop_start;
mod sysctl_abi;
mod target_closed;

pub use bpf_migrate::{bpf_drop, bpf_select};
pub use closed_before_queued::{closed_before_queued, Path};
pub use closing_listener::{
    child_of_closing_listener, child_of_orphaned_listener, closed_during_ack, closed_during_ack_bpf,
};
pub use fastopen::fastopen;
pub use in_flight::{in_flight, Trigger};
pub use isolation::{other_device, other_netns, other_uid};
pub use load_aware::{stalled_target_children, stalled_target_reqsk_ack};
pub use lost::{
    bpf_to_full_target, disabled_after_close, expired_in_migration, lost_children, Lost,
};
pub use nomem::{nomem_at_close, nomem_in_flight, Alloc};
pub use park_ends::{
    park_bound_max_orphans, park_bound_per_netns, park_destroyed_by_bpf_iter,
    park_destroyed_by_ss_k, park_ephemeral_bind_skips, park_evicted,
    park_joiner_bind_evicts_nothing, park_kept_by_disjoint_addr, park_many_namespaces,
    park_netns_teardown, park_sysctl_lowered, park_sysctl_zero, Stranger,
};
pub use park_races::{
    park_expiry_vs_join, park_joiner_closes_before_adoption, park_netns_exit,
    park_takes_a_closing_listeners_children,
};
pub use queued_children::{incoming_cpu_children, queued_children};
pub use stop_start::{
    grace_rejects_unknown, stop_start, stop_start_expired, stop_start_owner, stop_start_strangers,
};
pub use sysctl_abi::sysctl_rejects_unknown;
pub use target_closed::{
    target_closed_during_ack, target_closed_during_ack_third, target_closed_during_close,
};
