/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The gate shared by reuseport_migrate_race.c and its kprobe program, in
 * a map that the test maps into its memory: each side stores single
 * fields, never the whole value back, so neither undoes what the other
 * wrote meanwhile.
 */
#ifndef __REUSEPORT_MIGRATE_RACE_H
#define __REUSEPORT_MIGRATE_RACE_H

#include <linux/types.h>

/* How a hold stands: one field, stored once at each step, so that the
 * test learns how a hold ended from a single load. The program's stores
 * are plain, and bpf.mk sets no -mcpu: nothing orders two of them for a
 * reader on another CPU.
 */
enum gate_hold {
	GATE_IDLE,
	GATE_HOLDING,
	GATE_RELEASED,		/* by the test */
	GATE_TIMED_OUT,		/* by the program's own limit */
};

struct gate {
	/* Written by the test: hold the next path for a listener of @port
	 * (the program clears @armed as it takes that path), then @release
	 * it.
	 */
	__u32 armed;
	__u32 port;
	__u32 release;
	/* Written by the program: an enum gate_hold, and how many paths it
	 * held (one, unless two took the gate at once). Nothing orders @held
	 * before @hold: the test reads @held once the hold has ended, which
	 * it learns from @hold a spin of milliseconds after @held was added
	 * to.
	 */
	__u32 hold;
	__u32 held;
};

/* What migrate_to_l1 saw of the migrations it was run for. */
struct migration {
	__u32 count;
	__u32 state;		/* of the last migrating_sk */
	__u32 len;		/* md->len: 0 when there is no skb */
	__u32 select_errors;	/* selections the kernel refused */
};

#endif /* __REUSEPORT_MIGRATE_RACE_H */
