// SPDX-License-Identifier: GPL-2.0

//! SO_REUSEPORT listener migration: the choice of the target listener.
//!
//! `reuseport_migrate_sock()` in `net/core/sock_reuseport.c` runs the BPF
//! program and keeps RCU, memory ordering and the refcount in C; it calls
//! [`reuseport_migrate_choose`] with a snapshot of the group to pick the
//! listener. The choice itself lives in [`policy`], which is plain `core`
//! Rust also built and tested on the host.
//!
//! Hot path: no sleeping, no allocation, no panics.

use core::ptr::{addr_of, read_volatile};
use kernel::bindings;

pub mod policy;

use policy::{Bpf, Choice, Failure, Group, Mode, Target};

/// `TCP_ESTABLISHED` from `include/net/tcp_states.h` (an enum bindgen does
/// not keep).
const TCP_ESTABLISHED: u8 = 1;

/// The live listeners of a `sock_reuseport`, as the C caller read them.
struct RcuGroup {
    /// First of `num_socks` listener pointers in `reuse->socks[]`.
    socks: *const *mut bindings::sock,
    /// `num_socks`, read once by the caller before `smp_rmb()`.
    num_socks: u16,
    /// CPU running the choice.
    cpu: i32,
}

impl RcuGroup {
    /// Listener `i` of the group.
    ///
    /// # Safety
    ///
    /// `i < self.num_socks`, and the caller's guarantees for `socks` hold.
    #[inline]
    unsafe fn sk(&self, i: u16) -> *const bindings::sock {
        // SAFETY: `i < num_socks <= max_socks` and the caller of
        // `reuseport_migrate_choose` holds `rcu_read_lock()`, so the slot is
        // in bounds and was published before `num_socks` (`smp_rmb()`).
        unsafe { *self.socks.add(usize::from(i)) }
    }
}

impl Group for RcuGroup {
    #[inline]
    fn num_socks(&self) -> u16 {
        self.num_socks
    }

    #[inline]
    fn usable(&self, i: u16) -> bool {
        // SAFETY: `policy` only asks for `i < num_socks()`.
        let sk = unsafe { self.sk(i) };
        // SAFETY: a listener in `socks[]` stays allocated under RCU;
        // `skc_state` changes concurrently, hence the single volatile read,
        // through a raw pointer: a reference would claim it does not.
        let state = unsafe { read_volatile(addr_of!((*sk).__sk_common.skc_state)) };
        state != TCP_ESTABLISHED
    }

    #[inline]
    fn on_this_cpu(&self, i: u16) -> bool {
        // SAFETY: `policy` only asks for `i < num_socks()`.
        let sk = unsafe { self.sk(i) };
        // SAFETY: `sk` is a live listener (see `usable`). The volatile read is
        // the `READ_ONCE()` that pairs with `reuseport_update_incoming_cpu()`;
        // read here rather than by a C helper, which would be a call per
        // listener that cannot be inlined. `__bindgen_anon_7` is the union
        // holding `skc_incoming_cpu`: if bindgen numbers it otherwise, this
        // does not build.
        let cpu = unsafe {
            read_volatile(addr_of!(
                (*sk).__sk_common.__bindgen_anon_7.skc_incoming_cpu
            ))
        };
        cpu == self.cpu
    }

    #[inline]
    fn room(&self, i: u16) -> u32 {
        // SAFETY: `policy` only asks for `i < num_socks()`.
        let sk = unsafe { self.sk(i) };
        // SAFETY: `sk` is a live listener (see `usable`); both fields change
        // locklessly (`sk_acceptq_is_full()` reads them with `READ_ONCE()`).
        let (backlog, max) = unsafe {
            (
                read_volatile(addr_of!((*sk).sk_ack_backlog)),
                read_volatile(addr_of!((*sk).sk_max_ack_backlog)),
            )
        };
        // Full when backlog > max, as in `sk_acceptq_is_full()`.
        max.saturating_add(1).saturating_sub(backlog)
    }
}

/// Chooses the listener that takes over a migrating socket.
///
/// Returns `REUSEPORT_MIGRATE_OK` with `*target` set, or the reason there is
/// none (`enum reuseport_migrate_result`).
///
/// # Safety
///
/// Called by `reuseport_migrate_sock()` only: under `rcu_read_lock()`, with
/// `ctx->reuse` a live group whose first `ctx->num_socks` slots were read
/// after `smp_rmb()`, `ctx->selected` valid when `ctx->bpf` says so, and
/// `target` writable.
#[no_mangle]
pub unsafe extern "C" fn reuseport_migrate_choose(
    ctx: *const bindings::reuseport_migrate_ctx,
    target: *mut *mut bindings::sock,
) -> core::ffi::c_int {
    // SAFETY: the caller passes a valid, initialised context.
    let ctx = unsafe { &*ctx };
    // SAFETY: `reuse` is live under RCU; `socks` is its trailing array.
    let socks = unsafe { (*ctx.reuse).socks.as_ptr() };
    // SAFETY: `reuse` is live under RCU. Paired with the `WRITE_ONCE()`s in
    // `__reuseport_(get|put)_incoming_cpu()`.
    let incoming_cpu = unsafe { read_volatile(addr_of!((*ctx.reuse).incoming_cpu)) };
    let group = RcuGroup {
        socks,
        num_socks: ctx.num_socks,
        cpu: ctx.cpu,
    };
    let bpf = match u32::from(ctx.bpf) {
        bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_SELECTED => {
            Bpf::Selected(ctx.selected)
        }
        bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_DROP => Bpf::Drop,
        bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_PASS => Bpf::Pass,
        _ => Bpf::None,
    };
    let choice = Choice {
        hash: ctx.hash,
        mode: Mode::from_sysctl(ctx.migrate_req),
        prefer_cpu: incoming_cpu != 0,
        bpf,
    };
    let sk = match policy::choose(&group, choice) {
        Ok(Target::Bpf(sk)) => sk,
        // SAFETY: `policy` returns indices below `num_socks()`.
        Ok(Target::Index(i)) => unsafe { group.sk(i) }.cast_mut(),
        Err(why) => return why as core::ffi::c_int,
    };
    // SAFETY: the caller passes a writable `target`.
    unsafe { *target = sk };
    bindings::reuseport_migrate_result_REUSEPORT_MIGRATE_OK as core::ffi::c_int
}

// Keep the Rust and C reasons in step.
const _: () = {
    assert!(
        Failure::NoListener as u32
            == bindings::reuseport_migrate_result_REUSEPORT_MIGRATE_NO_LISTENER
    );
    assert!(
        Failure::Disabled as u32 == bindings::reuseport_migrate_result_REUSEPORT_MIGRATE_DISABLED
    );
    assert!(
        Failure::BpfCancelled as u32
            == bindings::reuseport_migrate_result_REUSEPORT_MIGRATE_BPF_CANCELLED
    );
};
