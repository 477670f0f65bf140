// SPDX-License-Identifier: GPL-2.0
/*
 * One SK_REUSEPORT program (expected attach type
 * BPF_SK_REUSEPORT_SELECT_OR_MIGRATE) used in two roles:
 *
 *  - for a new connection (migrating_sk == NULL) it places the SYN on the
 *    listener at index cfg[CFG_SYN_SLOT] of the socket array, or leaves the
 *    choice to the kernel's hash when that slot is SLOT_NONE;
 *  - for a socket being moved away from a closed listener it picks index
 *    cfg[CFG_MIGRATE_SLOT], lets the kernel choose (SLOT_NONE), or refuses
 *    the move (SLOT_DROP).
 *
 * Every decision is counted in the stats array so userspace can compare
 * what the program saw with what the kernel reported.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define CFG_SYN_SLOT 0
#define CFG_MIGRATE_SLOT 1

#define SLOT_NONE 0xffffffffu
#define SLOT_DROP 0xfffffffeu

/* keep in sync with Stat in src/bpf.rs */
enum stat {
	ST_SYN_SELECTED,
	ST_MIGRATE_ESTABLISHED,
	ST_MIGRATE_SYN_RECV,
	ST_MIGRATE_NEW_SYN_RECV_ACK,
	ST_MIGRATE_NEW_SYN_RECV_TIMER,
	ST_MIGRATE_DROPPED,
	ST_SELECT_ERROR,
	ST_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} steer_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

static __always_inline void bump(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&steer_stats, &which);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline __u32 cfg(__u32 key)
{
	__u32 *v = bpf_map_lookup_elem(&steer_cfg, &key);

	return v ? *v : SLOT_NONE;
}

SEC("sk_reuseport/migrate")
int steer(struct sk_reuseport_md *md)
{
	struct bpf_sock *moving = md->migrating_sk;
	__u32 slot;
	__u32 state;

	if (!moving) {
		slot = cfg(CFG_SYN_SLOT);
		if (slot == SLOT_NONE)
			return SK_PASS;
		if (bpf_sk_select_reuseport(md, &listeners, &slot, 0)) {
			bump(ST_SELECT_ERROR);
			return SK_DROP;
		}
		bump(ST_SYN_SELECTED);
		return SK_PASS;
	}

	slot = cfg(CFG_MIGRATE_SLOT);
	if (slot == SLOT_DROP) {
		bump(ST_MIGRATE_DROPPED);
		return SK_DROP;
	}
	if (slot != SLOT_NONE && bpf_sk_select_reuseport(md, &listeners, &slot, 0)) {
		bump(ST_SELECT_ERROR);
		return SK_DROP;
	}

	state = moving->state;
	if (state == BPF_TCP_ESTABLISHED)
		bump(ST_MIGRATE_ESTABLISHED);
	else if (state == BPF_TCP_SYN_RECV)
		bump(ST_MIGRATE_SYN_RECV);
	else if (state == BPF_TCP_NEW_SYN_RECV)
		/* no packet behind the call means the SYN+ACK timer fired */
		bump(md->len ? ST_MIGRATE_NEW_SYN_RECV_ACK : ST_MIGRATE_NEW_SYN_RECV_TIMER);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
