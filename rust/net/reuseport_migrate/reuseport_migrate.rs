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

use policy::{Bpf, Choice, Failure, Mode};

/// The type of [`reuseport_migrate_choose`]: the Rust entry point and the C
/// prototype in `include/net/reuseport_migrate.h`, as bindgen reads it, are
/// both coerced to it below, so that they cannot drift apart.
type ChooseFn = unsafe extern "C" fn(
    *mut bindings::sock_reuseport,
    u16,
    u32,
    u8,
    bindings::reuseport_migrate_bpf,
    *mut bindings::sock,
) -> bindings::reuseport_migrate_choice;

const _: ChooseFn = bindings::reuseport_migrate_choose;
const _: ChooseFn = reuseport_migrate_choose;

// The fields read in place below, at the offsets clang gives them
// (`rust/bindings/bindings_helper.h`). bindgen can lay a struct out
// otherwise: it leaves out 7.3's anonymous `-fms-extensions` member of
// `socket_lock_t` (see `has_room()`). A field it misplaces fails the build
// here, not a test at run time on one configuration.
const _: () = {
    use bindings::{sock, sock_common, sock_reuseport};
    use core::mem::offset_of;

    let common = offset_of!(sock, __sk_common);
    assert!(common + offset_of!(sock_common, skc_state) == bindings::REUSEPORT_MIGRATE_SK_STATE);
    // The union of `skc_incoming_cpu`: its members all start where it does.
    assert!(
        common + offset_of!(sock_common, __bindgen_anon_7)
            == bindings::REUSEPORT_MIGRATE_SK_INCOMING_CPU
    );
    assert!(offset_of!(sock_reuseport, socks) == bindings::REUSEPORT_MIGRATE_REUSE_SOCKS);
    assert!(
        offset_of!(sock_reuseport, incoming_cpu) == bindings::REUSEPORT_MIGRATE_REUSE_INCOMING_CPU
    );
};

/// The group and its listeners, apart so that nothing else can make a
/// [`Listener`](group::Listener) out of an arbitrary pointer.
mod group {
    use core::marker::PhantomData;
    use core::ptr::{addr_of, read_volatile};
    use kernel::bindings;

    use crate::policy::Group;

    /// A listener of the group being chosen from: a socket read from one of its
    /// live slots, or the one the BPF program selected.
    ///
    /// Only [`RcuGroup`] makes one, and only from such a socket, so every
    /// `Listener` points to a `struct sock` that stays allocated for as long as
    /// the group may be used: listeners are freed after an RCU grace period
    /// (`SOCK_RCU_FREE`), and the group lives inside one call of
    /// [`reuseport_migrate_choose`], under the caller's `rcu_read_lock()`.
    #[derive(Clone, Copy)]
    pub(crate) struct Listener<'a> {
        sk: *mut bindings::sock,
        group: PhantomData<&'a RcuGroup>,
    }

    /// The live listeners of a `sock_reuseport`, as the C caller read them.
    pub(crate) struct RcuGroup {
        /// First of `num_socks` listener pointers in `reuse->socks[]`.
        socks: *const *mut bindings::sock,
        /// `num_socks`, read once by the caller before `smp_rmb()`.
        num_socks: u16,
    }

    impl RcuGroup {
        /// The view of `reuse`, whose first `num_socks` slots the caller may
        /// read.
        ///
        /// # Safety
        ///
        /// The caller holds `rcu_read_lock()` for as long as the view and the
        /// listeners it hands out are used; `reuse` is a live group with
        /// `num_socks <= reuse->max_socks`, read before the caller's `smp_rmb()`
        /// that orders it against the slots.
        #[inline]
        pub(crate) unsafe fn new(reuse: *mut bindings::sock_reuseport, num_socks: u16) -> Self {
            // SAFETY: `reuse` is live (the caller's guarantee); `socks` is its
            // trailing array, and taking its address reads nothing.
            let socks = unsafe { addr_of!((*reuse).socks) }.cast::<*mut bindings::sock>();
            RcuGroup { socks, num_socks }
        }

        /// The listener the BPF program selected.
        ///
        /// # Safety
        ///
        /// `sk` is a listener of the group (`bpf_sk_select_reuseport()` checks
        /// it), so it stays allocated as a [`Listener`] requires.
        #[inline]
        pub(crate) unsafe fn selected(&self, sk: *mut bindings::sock) -> Listener<'_> {
            Listener {
                sk,
                group: PhantomData,
            }
        }
    }

    /// The CPU this runs on. As in `reuseport_select_sock_by_hash()`, it is
    /// a hint: the task may run elsewhere right after.
    #[cfg(kernel_cpu)]
    #[inline]
    fn this_cpu() -> u32 {
        kernel::cpu::CpuId::current().as_u32()
    }

    /// The CPU this runs on. As in `reuseport_select_sock_by_hash()`, it is
    /// a hint: the task may run elsewhere right after. This kernel crate has
    /// no `kernel::cpu`, so the C function that it would wrap is called.
    #[cfg(not(kernel_cpu))]
    #[inline]
    fn this_cpu() -> u32 {
        // SAFETY: `raw_smp_processor_id()` has no precondition: it reads this
        // CPU's number, which may be stale by the time it is used, as a hint.
        unsafe { bindings::raw_smp_processor_id() }
    }

    impl Listener<'_> {
        /// The socket, for the C caller.
        #[inline]
        pub(crate) fn as_ptr(self) -> *mut bindings::sock {
            self.sk
        }
    }

    impl<'a> Group for &'a RcuGroup {
        type Sk = Listener<'a>;

        #[inline]
        fn num_socks(&self) -> u16 {
            self.num_socks
        }

        #[inline]
        fn get(&self, i: u16) -> Option<Listener<'a>> {
            if i >= self.num_socks {
                return None;
            }
            // SAFETY: `i < num_socks <= max_socks`, so the slot is in the array
            // (`RcuGroup::new`). The volatile read is the `READ_ONCE()` of the C
            // code: `__reuseport_detach_sock()` may move another listener into
            // the slot meanwhile, so the slot is read once, and the policy checks
            // and returns the socket read here.
            let sk = unsafe { read_volatile(self.socks.add(usize::from(i))) };
            Some(Listener {
                sk,
                group: PhantomData,
            })
        }

        #[inline]
        fn usable(&self, l: Listener<'a>) -> bool {
            // SAFETY: `l.sk` is allocated (see `Listener`). `skc_state` changes
            // concurrently: the volatile read, through a raw pointer, is the
            // stand-in for `READ_ONCE()`.
            let state = unsafe { read_volatile(addr_of!((*l.sk).__sk_common.skc_state)) };
            u32::from(state) != bindings::TCP_ESTABLISHED
        }

        #[inline]
        fn on_this_cpu(&self, l: Listener<'a>) -> bool {
            // SAFETY: `l.sk` is allocated (see `Listener`). The volatile read is
            // the stand-in for the `READ_ONCE()` that pairs with the
            // `WRITE_ONCE()` in `reuseport_update_incoming_cpu()`.
            // `__bindgen_anon_7` is the union holding `skc_incoming_cpu`: if
            // bindgen numbers it otherwise, this does not build.
            let cpu = unsafe {
                read_volatile(addr_of!(
                    (*l.sk).__sk_common.__bindgen_anon_7.skc_incoming_cpu
                ))
            };
            // -1, no preference, matches no CPU, as in the C comparison.
            u32::try_from(cpu) == Ok(this_cpu())
        }

        #[inline]
        fn has_room(&self, l: Listener<'a>) -> bool {
            // Through C, not the generated `struct sock`: 7.3's
            // `socket_lock_t` keeps its spinlock in an anonymous
            // `-fms-extensions` member of a union, which bindgen leaves
            // out, so with lockdep every field after `sk_lock` sits 64
            // bytes early on the Rust side.
            // SAFETY: `l.sk` is allocated (see `Listener`); the helper reads
            // both counts once, with `READ_ONCE()`.
            !unsafe { bindings::sk_acceptq_is_full(l.sk) }
        }
    }
}

use group::{Listener, RcuGroup};

/// The C result for the policy's answer.
#[inline]
fn result(answer: Result<Listener<'_>, Failure>) -> bindings::reuseport_migrate_choice {
    let (sk, result) = match answer {
        Ok(l) => (
            l.as_ptr(),
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

/// The inputs of the choice besides the group.
///
/// # Safety
///
/// As for [`reuseport_migrate_choose`].
#[inline]
unsafe fn choice<'a>(
    group: &'a RcuGroup,
    reuse: *mut bindings::sock_reuseport,
    hash: u32,
    migrate_req: u8,
    bpf: bindings::reuseport_migrate_bpf,
    selected: *mut bindings::sock,
) -> Choice<Listener<'a>> {
    // SAFETY: `reuse` is live under RCU. The volatile read is the stand-in
    // for the `READ_ONCE()` that pairs with the `WRITE_ONCE()`s in
    // `__reuseport_(get|put)_incoming_cpu()`.
    let incoming_cpu = unsafe { read_volatile(addr_of!((*reuse).incoming_cpu)) };
    Choice {
        hash,
        mode: Mode::from_sysctl(migrate_req),
        prefer_cpu: incoming_cpu != 0,
        bpf: match bpf {
            bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_NONE => Bpf::None,
            bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_SELECTED => {
                // SAFETY: `bpf` says that `selected` is the program's choice,
                // a listener of the group.
                Bpf::Selected(unsafe { group.selected(selected) })
            }
            bindings::reuseport_migrate_bpf_REUSEPORT_MIGRATE_BPF_DROP => Bpf::Drop,
            _ => Bpf::Pass,
        },
    }
}

/// Chooses the listener that takes over a migrating socket.
///
/// Returns `REUSEPORT_MIGRATE_OK` and the listener, or the reason there is
/// none (`enum reuseport_migrate_result`).
///
/// The common case is answered here by [`policy::quick`]; a choice that
/// needs a scan of the group continues in [`choose_scan`], kept out of line
/// and off the common path.
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
    // SAFETY: the caller's guarantees are `RcuGroup::new`'s requirements.
    let group = unsafe { RcuGroup::new(reuse, num_socks) };
    // SAFETY: as above.
    let c = unsafe { choice(&group, reuse, hash, migrate_req, bpf, selected) };
    match policy::quick(&&group, &c) {
        Some(answer) => result(answer),
        None => choose_scan(&group, c),
    }
}

/// [`reuseport_migrate_choose`] when the choice needs a scan of the group.
///
/// It takes the choice already made of the racy inputs (the group's
/// `incoming_cpu`, the program's verdict), so both paths decide on one
/// read of each.
#[cold]
#[inline(never)]
fn choose_scan<'a>(
    group: &'a RcuGroup,
    c: Choice<Listener<'a>>,
) -> bindings::reuseport_migrate_choice {
    result(policy::choose(&group, c))
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
