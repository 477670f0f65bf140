// SPDX-License-Identifier: GPL-2.0
/*
 * A SO_REUSEPORT group's select-or-migrate program for
 * prog_tests/reuseport_migrate_bpf.c: it steers each new SYN to the
 * listener at index syn_idx of the group's sockarray, and answers each
 * migration with the verdict the test set, counting what it was shown.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} listeners SEC(".maps");

/* How a migration is answered (as in prog_tests/reuseport_migrate_bpf.c) */
#define VERDICT_PASS	0	/* SK_PASS, no selection: the kernel chooses */
#define VERDICT_DROP	1	/* SK_DROP: the migration is cancelled */
#define VERDICT_SELECT	2	/* the listener at select_idx */

__u32 syn_idx;
__u32 verdict;
__u32 select_idx;

/* Migrations seen, by the state of migrating_sk (TCP states < 16) */
__u32 migrations[16];
/* Migrations run with an skb (a final ACK), selections refused, and SYNs
 * that could not be steered (each then dropped)
 */
__u32 with_skb;
__u32 select_errors;
__u32 syn_errors;

SEC("sk_reuseport/migrate")
int steer_and_migrate(struct sk_reuseport_md *md)
{
	struct bpf_sock *msk = md->migrating_sk;
	__u32 idx, state;

	if (!msk) {
		idx = syn_idx;
		if (bpf_sk_select_reuseport(md, &listeners, &idx, 0)) {
			__sync_fetch_and_add(&syn_errors, 1);
			return SK_DROP;
		}
		return SK_PASS;
	}

	state = msk->state;
	if (state < 16)
		__sync_fetch_and_add(&migrations[state], 1);
	if (md->len)
		__sync_fetch_and_add(&with_skb, 1);

	switch (verdict) {
	case VERDICT_DROP:
		return SK_DROP;
	case VERDICT_SELECT:
		idx = select_idx;
		if (bpf_sk_select_reuseport(md, &listeners, &idx, 0)) {
			__sync_fetch_and_add(&select_errors, 1);
			return SK_DROP;
		}
		return SK_PASS;
	default:
		return SK_PASS;
	}
}

char _license[] SEC("license") = "GPL";
