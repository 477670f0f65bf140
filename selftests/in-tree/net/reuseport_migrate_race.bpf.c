// SPDX-License-Identifier: GPL-2.0
/*
 * Gates for reuseport_migrate_race: a kprobe that holds, once, the next
 * kernel path that reaches it for a listener of the test's port, until
 * userspace lets it go, so that the test runs a close() of that listener
 * exactly inside a race window.
 *
 * close_gate holds a close() of a listener at tcp_set_state(TCP_CLOSE):
 * __tcp_close() has set SHUTDOWN_MASK on it, but it still listens.
 * listener_gate, attached where the test says, holds a softirq that made a
 * child from the listener and is about to queue it there.
 *
 * migrate_to_l1, a select-or-migrate program attached to the group for the
 * *_prog cases, selects the listener in l1_map for every migration and
 * keeps what it was shown of it.
 *
 * The test's kernels need no BTF: the local port and the state are read at
 * their offsets in struct sock_common, whose leading members do not
 * depend on the configuration (skc_addrpair, skc_hash and skc_dport
 * before skc_num; skc_family before skc_state).
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "reuseport_migrate_race.h"

#define SKC_NUM_OFFSET		14
#define SKC_STATE_OFFSET	18

#define TCP_CLOSE	7
#define TCP_LISTEN	10

/* The longest a gate holds a CPU if the test never releases it: below
 * the hard lockup watchdog's 10 s.
 */
#define MAX_HOLD_NS	(8ULL * 1000 * 1000 * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gate);
} gate_map SEC(".maps");

struct hold {
	struct gate *g;
	__u64 deadline;
};

static long still_held(__u64 i, void *data)
{
	struct hold *h = data;

	if (h->g->release)
		return 1;
	return bpf_ktime_get_ns() > h->deadline;
}

/* Holds the caller if the gate is armed for the port of @sk. */
static int hold_if_armed(void *sk)
{
	struct hold h = {};
	__u32 zero = 0;
	__u16 port = 0;
	struct gate *g;
	int i;

	g = bpf_map_lookup_elem(&gate_map, &zero);
	if (!g || !g->armed)
		return 0;
	bpf_probe_read_kernel(&port, sizeof(port), sk + SKC_NUM_OFFSET);
	if (port != g->port)
		return 0;

	g->armed = 0;
	__sync_fetch_and_add(&g->held, 1);
	g->hold = GATE_HOLDING;
	h.g = g;
	h.deadline = bpf_ktime_get_ns() + MAX_HOLD_NS;
	/* bpf_loop() runs at most 1 << 23 rounds: go round it again. */
	for (i = 0; i < 64; i++) {
		bpf_loop(1 << 23, still_held, &h, 0);
		if (g->release ||
		    bpf_ktime_get_ns() > h.deadline)
			break;
	}
	g->hold = g->release ? GATE_RELEASED : GATE_TIMED_OUT;
	return 0;
}

SEC("kprobe/tcp_set_state")
int BPF_KPROBE(close_gate, void *sk, int state)
{
	__u8 old = 0;

	if (state != TCP_CLOSE)
		return 0;
	bpf_probe_read_kernel(&old, sizeof(old), sk + SKC_STATE_OFFSET);
	if (old != TCP_LISTEN)
		return 0;
	return hold_if_armed(sk);
}

SEC("kprobe")
int BPF_KPROBE(listener_gate, void *sk)
{
	return hold_if_armed(sk);
}

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} l1_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct migration);
} migration_map SEC(".maps");

SEC("sk_reuseport/migrate")
int migrate_to_l1(struct sk_reuseport_md *md)
{
	struct bpf_sock *sk = md->migrating_sk;
	struct migration *m;
	__u32 zero = 0;

	/* A SYN: the kernel's hash chooses, as without a program. */
	if (!sk)
		return SK_PASS;

	m = bpf_map_lookup_elem(&migration_map, &zero);
	if (!m)
		return SK_PASS;
	__sync_fetch_and_add(&m->count, 1);
	m->state = sk->state;
	m->len = md->len;
	/* Refused, the choice falls back to the kernel's: the test reads
	 * that here, not from a reset that hides what the program saw.
	 */
	if (bpf_sk_select_reuseport(md, &l1_map, &zero, 0))
		__sync_fetch_and_add(&m->select_errors, 1);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
