/* SPDX-License-Identifier: GPL-2.0 */
/* Entry point of the differential test into the kernel's C choice. */
#include <stdlib.h>

int shim_this_cpu;

/*
 * Builds a group of @n listeners from the arrays, runs the C
 * reuseport_migrate_choose() and returns the chosen listener's index,
 * -1 for the listener the BPF program selected, or -2 for none, with
 * the result in *@result.
 */
int c_choose(u16 n, const u8 *state, const int *cpu, const u32 *backlog,
	     const u32 *max_backlog, unsigned int incoming_cpu, int this_cpu,
	     u32 hash, u8 migrate_req, unsigned int bpf, int *result)
{
	struct sock_reuseport *reuse;
	struct sock *socks, selected = {};
	struct reuseport_migrate_choice c;
	int i, ret = -2;

	reuse = calloc(1, sizeof(*reuse) + n * sizeof(reuse->socks[0]));
	socks = calloc(n ? n : 1, sizeof(*socks));
	if (!reuse || !socks)
		abort();
	reuse->max_socks = n;
	reuse->num_socks = n;
	reuse->incoming_cpu = incoming_cpu;
	for (i = 0; i < n; i++) {
		socks[i].sk_state = state[i];
		socks[i].sk_incoming_cpu = cpu[i];
		socks[i].sk_ack_backlog = backlog[i];
		socks[i].sk_max_ack_backlog = max_backlog[i];
		reuse->socks[i] = &socks[i];
	}
	shim_this_cpu = this_cpu;

	c = reuseport_migrate_choose(reuse, n, hash, migrate_req,
				     (enum reuseport_migrate_bpf)bpf, &selected);
	*result = c.result;
	if (c.sk == &selected)
		ret = -1;
	for (i = 0; i < n; i++)
		if (c.sk == &socks[i])
			ret = i;
	free(socks);
	free(reuse);
	return ret;
}
