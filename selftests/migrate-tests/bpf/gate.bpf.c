// SPDX-License-Identifier: GPL-2.0
/*
 * kprobes that hold, once, a kernel path at a chosen point until userspace
 * lets it go, so that a test can make another path run exactly inside a
 * race window instead of hoping a restart storm hits it. A test attaches
 * one of them:
 *
 * hashdance_gate, at inet_csk_complete_hashdance_migrate(), or
 * inet_csk_complete_hashdance() on a kernel without the series: when the
 * final ACK of a handshake arrives, tcp_v4_rcv()/tcp_v6_rcv() check that
 * the request's listener still listens, tcp_check_req() creates the child,
 * and that function queues it on the listener, which may have been closed
 * in between.
 *
 * close_gate, at tcp_set_state(listener, TCP_CLOSE) from __tcp_close():
 * close() has set SHUTDOWN_MASK on the listener but it still listens, so
 * handshakes completing meanwhile create children from a shut-down socket.
 *
 * queue_add_gate, at inet_csk_reqsk_queue_add_migrate(), or
 * inet_csk_reqsk_queue_add() on a kernel without the series: a Fast Open
 * child (made when its SYN arrives) or a syncookie child (made when a
 * cookie ACK arrives) exists and is about to be queued on a listener that
 * tcp_v4_rcv()/tcp_v6_rcv() found listening without taking its lock.
 *
 * The series makes TCP call those _migrate variants and keeps the old
 * functions for other callers, so the loader (src/bpf.rs) attaches these
 * two gates to the variant when the kernel has it, else to the old name:
 * their sections name no function.
 *
 * migrate_gate, at the return of reuseport_migrate_sock() with a target:
 * the target is chosen and referenced, the migrating socket not yet queued
 * on it, and the target may stop listening in between.
 *
 * dead_child_ack, dead_child_close and dead_child_done, attached together,
 * order a final ACK and a close() of its listener so that the child is
 * created from a listener that close() has orphaned (SOCK_DEAD set) but
 * not yet destroyed (it still holds its port, so the child can be made):
 * the ACK waits at the entry of tcp_check_req(), after tcp_v4_rcv() found
 * the listener listening, until the close() reaches
 * inet_csk_destroy_sock(listener); the close() waits there until the ACK
 * returns from tcp_check_req(). No userspace step is needed inside the
 * window, so both CPUs can be held at once.
 *
 * Userspace sets the listening port and arms the gate; the next call for a
 * listener on that port disarms it, sets "holding" and spins until
 * "release" is set or MAX_HOLD_NS has passed ("timed_out"). Calls for other
 * ports (a kprobe sees every namespace) pass and are counted, so a test
 * that waits in vain can say what went by instead.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

/*
 * The guest kernel has no BTF, so no CO-RE: skc_num, the local port in host
 * order, is read at its offset in struct sock_common, after skc_addrpair (8
 * bytes), skc_hash (4) and skc_dport (2). Those members lead the struct
 * whatever the config. Should it ever move, no handshake matches and the
 * test fails naming the ports it saw.
 */
#define SKC_NUM_OFFSET 14
/* skc_state follows skc_family (2 bytes) */
#define SKC_STATE_OFFSET 18

#define TCP_CLOSE 7
#define TCP_LISTEN 10

#define MAX_HOLD_NS (5ULL * 1000 * 1000 * 1000)

struct gate {
	__u32 armed;
	__u32 holding;
	__u32 release;
	__u32 timed_out;
	__u64 held;
	__u32 port;
	__u32 other_port;
	__u64 others;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
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

	if (*(volatile __u32 *)&h->g->release)
		return 1;
	if (bpf_ktime_get_ns() > h->deadline) {
		h->g->timed_out = 1;
		return 1;
	}
	return 0;
}

static struct gate *armed_gate(void)
{
	__u32 zero = 0;
	struct gate *g;

	g = bpf_map_lookup_elem(&gate_map, &zero);
	if (!g || !*(volatile __u32 *)&g->armed)
		return 0;
	return g;
}

/* Holds the caller at an armed gate @g until released or timed out. */
static int hold(struct gate *g)
{
	struct hold h;
	int i;

	g->armed = 0;
	g->held++;
	g->holding = 1;
	h.g = g;
	h.deadline = bpf_ktime_get_ns() + MAX_HOLD_NS;
	for (i = 0; i < 64; i++) {
		bpf_loop(1 << 23, still_held, &h, 0);
		if (*(volatile __u32 *)&g->release || g->timed_out)
			break;
	}
	if (!*(volatile __u32 *)&g->release)
		g->timed_out = 1;
	g->holding = 0;
	return 0;
}

/* Holds the caller if the gate is armed for the port of @listener. */
static int hold_if_armed(void *listener)
{
	struct gate *g = armed_gate();
	__u16 port = 0;

	if (!g)
		return 0;
	bpf_probe_read_kernel(&port, sizeof(port), listener + SKC_NUM_OFFSET);
	if (port != g->port) {
		g->other_port = port;
		__sync_fetch_and_add(&g->others, 1);
		return 0;
	}
	return hold(g);
}

SEC("kprobe")
int BPF_KPROBE(hashdance_gate, void *listener)
{
	return hold_if_armed(listener);
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
int BPF_KPROBE(queue_add_gate, void *listener)
{
	return hold_if_armed(listener);
}

SEC("kretprobe/reuseport_migrate_sock")
int BPF_KRETPROBE(migrate_gate, void *target)
{
	if (!target)
		return 0;
	return hold_if_armed(target);
}

/* The stages of the dead_child_* programs. */
enum {
	CHAIN_IDLE,
	CHAIN_ACK_HELD,		/* the ACK waits in tcp_check_req() */
	CHAIN_CLOSE_HELD,	/* close() waits in inet_csk_destroy_sock() */
	CHAIN_ACK_DONE,		/* tcp_check_req() returned */
};

struct chain {
	__u32 armed;
	__u32 port;
	__u32 stage;
	__u32 timed_out;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct chain);
} chain_map SEC(".maps");

struct chain_wait {
	struct chain *c;
	__u32 stage;
	__u64 deadline;
};

static long stage_reached(__u64 i, void *data)
{
	struct chain_wait *w = data;

	if (*(volatile __u32 *)&w->c->stage >= w->stage)
		return 1;
	if (bpf_ktime_get_ns() > w->deadline) {
		w->c->timed_out = 1;
		return 1;
	}
	return 0;
}

/* Spins until the chain reaches @stage or MAX_HOLD_NS has passed. */
static void wait_for_stage(struct chain *c, __u32 stage)
{
	struct chain_wait w = {
		.c = c,
		.stage = stage,
		.deadline = bpf_ktime_get_ns() + MAX_HOLD_NS,
	};
	int i;

	for (i = 0; i < 64; i++) {
		bpf_loop(1 << 23, stage_reached, &w, 0);
		if (*(volatile __u32 *)&c->stage >= stage || c->timed_out)
			return;
	}
	c->timed_out = 1;
}

static struct chain *chain(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&chain_map, &zero);
}

static __u16 port_of(void *sk)
{
	__u16 port = 0;

	bpf_probe_read_kernel(&port, sizeof(port), sk + SKC_NUM_OFFSET);
	return port;
}

SEC("kprobe/tcp_check_req")
int BPF_KPROBE(dead_child_ack, void *listener)
{
	struct chain *c = chain();

	if (!c || !*(volatile __u32 *)&c->armed || port_of(listener) != c->port)
		return 0;
	c->armed = 0;
	c->stage = CHAIN_ACK_HELD;
	wait_for_stage(c, CHAIN_CLOSE_HELD);
	return 0;
}

SEC("kprobe/inet_csk_destroy_sock")
int BPF_KPROBE(dead_child_close, void *sk)
{
	struct chain *c = chain();

	if (!c || *(volatile __u32 *)&c->stage != CHAIN_ACK_HELD ||
	    port_of(sk) != c->port)
		return 0;
	c->stage = CHAIN_CLOSE_HELD;
	wait_for_stage(c, CHAIN_ACK_DONE);
	return 0;
}

SEC("kretprobe/tcp_check_req")
int BPF_KRETPROBE(dead_child_done)
{
	struct chain *c = chain();

	if (c && *(volatile __u32 *)&c->stage == CHAIN_CLOSE_HELD)
		c->stage = CHAIN_ACK_DONE;
	return 0;
}

/*
 * park_work_gate, at the entry of tcp_park_work(), the work that ends a
 * park (adoption, expiry, eviction, cancel) and closes the listener on
 * system_unbound_wq. Its argument is the work, not the socket, and
 * where the work sits in the kernel's park structure is not ABI: this
 * gate holds the next run of the work whatever its port. The test arms
 * it only while its own park is the only one on the machine.
 */
SEC("kprobe/tcp_park_work")
int BPF_KPROBE(park_work_gate, void *work)
{
	struct gate *g = armed_gate();

	if (!g)
		return 0;
	return hold(g);
}

char LICENSE[] SEC("license") = "GPL";
