// SPDX-License-Identifier: GPL-2.0

//! SO_REUSEPORT listener migration: the choice of the target listener.
//!
//! `reuseport_migrate_sock()` in `net/core/sock_reuseport.c` runs the BPF
//! program and keeps RCU, memory ordering and the refcount in C; it calls
//! [`reuseport_migrate_choose`] with the group and the verdict to pick the
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
        // the `READ_ONCE()` that pairs with `reuseport_update_incoming_cpu()`.
        // `__bindgen_anon_7` is the union holding `skc_incoming_cpu`: if
        // bindgen numbers it otherwise, this does not build.
        let cpu = unsafe {
            read_volatile(addr_of!(
                (*sk).__sk_common.__bindgen_anon_7.skc_incoming_cpu
            ))
        };
        // SAFETY: no requirement. As in `reuseport_select_sock_by_hash()`, the
        // CPU is a hint: the task may run elsewhere right after. Only asked
        // when a listener set `SO_INCOMING_CPU`, so the helper call stays off
        // the common path.
        cpu == unsafe { bindings::raw_smp_processor_id() }
    }

    #[inline]
    fn has_room(&self, i: u16) -> bool {
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
        // Not `sk_acceptq_is_full()`.
        backlog <= max
    }
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

    /// The C result for the policy's answer.
    #[inline]
    fn result(
        &self,
        answer: Result<Target<*mut bindings::sock>, Failure>,
    ) -> bindings::reuseport_migrate_choice {
        let (sk, result) = match answer {
            Ok(Target::Bpf(sk)) => (sk, bindings::reuseport_migrate_result_REUSEPORT_MIGRATE_OK),
            // SAFETY: `policy` returns indices below `num_socks()`.
            Ok(Target::Index(i)) => (
                unsafe { self.sk(i) }.cast_mut(),
                bindings::reuseport_migrate_result_REUSEPORT_MIGRATE_OK,
            ),
            Err(why) => (core::ptr::null_mut(), why as u32),
        };
        bindings::reuseport_migrate_choice {
            sk,
            // The enum's values are small: the cast loses nothing.
            result: result as core::ffi::c_int,
        }
    }
}

/// The policy's view of the arguments of [`reuseport_migrate_choose`]: the
/// group and the other inputs of the choice.
///
/// # Safety
///
/// As for [`reuseport_migrate_choose`].
#[inline]
unsafe fn inputs(
    reuse: *mut bindings::sock_reuseport,
    num_socks: u16,
    hash: u32,
    migrate_req: u8,
    bpf: bindings::reuseport_migrate_bpf,
    selected: *mut bindings::sock,
) -> (RcuGroup, Choice<*mut bindings::sock>) {
    // SAFETY: `reuse` is live under RCU; `socks` is its trailing array.
    let socks = unsafe { (*reuse).socks.as_ptr() };
    // SAFETY: as above. Paired with the `WRITE_ONCE()`s in
    // `__reuseport_(get|put)_incoming_cpu()`.
    let incoming_cpu = unsafe { read_volatile(addr_of!((*reuse).incoming_cpu)) };
    let choice = Choice {
        hash,
        mode: Mode::from_sysctl(migrate_req),
        prefer_cpu: incoming_cpu != 0,
        bpf: match bpf {
            bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_NONE => Bpf::None,
            bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_SELECTED => {
                Bpf::Selected(selected)
            }
            bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_DROP => Bpf::Drop,
            _ => Bpf::Pass,
        },
    };
    (RcuGroup { socks, num_socks }, choice)
}

/// Chooses the listener that takes over a migrating socket.
///
/// Returns `REUSEPORT_MIGRATE_OK` and the listener, or the reason there is
/// none (`enum reuseport_migrate_result`).
///
/// The common case is answered here by [`policy::quick`], which needs no
/// callee-saved register; a choice that needs a scan of the group continues
/// out of line, in a tail call.
///
/// # Safety
///
/// Called by `reuseport_migrate_sock()` only: under `rcu_read_lock()`, with
/// `reuse` a live group whose first `num_socks` slots were read after
/// `smp_rmb()`, and `selected` a listener of it when `bpf` says so.
#[no_mangle]
pub unsafe extern "C" fn reuseport_migrate_choose(
    reuse: *mut bindings::sock_reuseport,
    num_socks: u16,
    hash: u32,
    migrate_req: u8,
    bpf: bindings::reuseport_migrate_bpf,
    selected: *mut bindings::sock,
) -> bindings::reuseport_migrate_choice {
    // SAFETY: the caller's guarantees are `inputs`' requirements.
    let (group, choice) = unsafe { inputs(reuse, num_socks, hash, migrate_req, bpf, selected) };
    match policy::quick(&group, &choice) {
        Some(answer) => group.result(answer),
        // SAFETY: forwards the caller's guarantees.
        None => unsafe { choose_scan(reuse, num_socks, hash, migrate_req, bpf, selected) },
    }
}

/// [`reuseport_migrate_choose`] when the choice needs a scan of the group.
///
/// # Safety
///
/// As for [`reuseport_migrate_choose`].
#[cold]
#[inline(never)]
unsafe extern "C" fn choose_scan(
    reuse: *mut bindings::sock_reuseport,
    num_socks: u16,
    hash: u32,
    migrate_req: u8,
    bpf: bindings::reuseport_migrate_bpf,
    selected: *mut bindings::sock,
) -> bindings::reuseport_migrate_choice {
    // SAFETY: the caller's guarantees are `inputs`' requirements.
    let (group, choice) = unsafe { inputs(reuse, num_socks, hash, migrate_req, bpf, selected) };
    group.result(policy::choose(&group, choice))
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
