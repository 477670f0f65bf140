// SPDX-License-Identifier: GPL-2.0
/*
 * XDP program for the loopback device of a test namespace: while a server
 * port is configured, every TCP segment sent to that port which carries ACK
 * but not SYN is discarded.  A client's SYN (with or without Fast Open data)
 * goes through, the server's SYN+ACK goes through (its destination is the
 * client's port), but the third segment of the handshake never reaches the
 * server, so the server side stays half open until userspace clears the port.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* key 0: server port in host byte order, 0 means "let everything pass" */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} hold_cfg SEC(".maps");

/* key 0: number of segments discarded */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hold_stats SEC(".maps");

static __always_inline struct tcphdr *tcp_header(void *data, void *end)
{
	struct ethhdr *eth = data;
	__u16 proto;

	if ((void *)(eth + 1) > end)
		return NULL;
	proto = bpf_ntohs(eth->h_proto);

	if (proto == ETH_P_IP) {
		struct iphdr *ip4 = (void *)(eth + 1);

		if ((void *)(ip4 + 1) > end || ip4->protocol != IPPROTO_TCP ||
		    ip4->ihl < 5)
			return NULL;
		return (void *)ip4 + ip4->ihl * 4;
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return NULL;
		return (void *)(ip6 + 1);
	}
	return NULL;
}

SEC("xdp")
int hold_final_ack(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 *port;
	__u64 *dropped;
	struct tcphdr *th;

	port = bpf_map_lookup_elem(&hold_cfg, &zero);
	if (!port || !*port)
		return XDP_PASS;

	th = tcp_header(data, end);
	if (!th || (void *)(th + 1) > end)
		return XDP_PASS;
	if (bpf_ntohs(th->dest) != *port || th->syn || !th->ack)
		return XDP_PASS;

	dropped = bpf_map_lookup_elem(&hold_stats, &zero);
	if (dropped)
		__sync_fetch_and_add(dropped, 1);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
