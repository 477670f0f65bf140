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

struct gate {
	/* Written by the test: hold the next path for a listener of @port
	 * (the program clears @armed as it takes that path), then @release
	 * it.
	 */
	__u32 armed;
	__u32 port;
	__u32 release;
	/* Written by the program. */
	__u32 holding;
	__u32 held;
	__u32 timed_out;
};

/* What migrate_to_l1 saw of the migrations it was run for. */
struct migration {
	__u32 count;
	__u32 state;	/* of the last migrating_sk */
	__u32 len;	/* of the last skb, 0 without one */
};

#endif /* __REUSEPORT_MIGRATE_RACE_H */
