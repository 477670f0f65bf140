// SPDX-License-Identifier: GPL-2.0
/*
 * A select-or-migrate program (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE) with
 * net.ipv4.tcp_migrate_req=2 and with net.ipv4.tcp_migrate_req_grace_ms:
 *
 * stalled_{pass,select_full,drop}: tcp_migrate_req=2, one listener's
 *   accept queue full, another with room. The listener that closes hands
 *   its children over as the program says: SK_PASS without a selection
 *   leaves the choice to the kernel, which skips the full queue; a
 *   selection is kept even when it names the full listener; SK_DROP
 *   cancels every migration, each counted in TCPMigrateReqFailBpf.
 *
 * park_{pass,drop}: tcp_migrate_req=0 and a grace. The group's last
 *   listener closes and, a migrate program being attached, is parked: a
 *   client of the gap is answered, and the next listener adopts every
 *   child through the program. SK_DROP at the adoption resets them, each
 *   counted in TCPMigrateReqFailBpf.
 *
 * The program sees each of these migrations with migrating_sk in
 * TCP_ESTABLISHED and no skb. Each subtest has a network namespace of its
 * own, whose sysctls it sets. Where tcp_migrate_req does not take 2 and
 * tcp_migrate_req_grace_ms does not exist, every subtest fails.
 */
#include <netinet/tcp.h>

#include "test_progs.h"
#include "network_helpers.h"
#include "test_reuseport_migrate_bpf.skel.h"

#define NETNS		"reuseport_migrate_bpf"
#define NR_CHILDREN	16
#define NR_ON_FULL	2	/* children that fill a backlog of 1 */
#define BACKLOG		32
#define GRACE_MS	"2000"
#define WAIT_MS		3000

/* As in progs/test_reuseport_migrate_bpf.c */
#define VERDICT_PASS	0
#define VERDICT_DROP	1
#define VERDICT_SELECT	2

struct family {
	int family;
	const char *addr;
	const char *name;
};

static const struct family families[] = {
	{ AF_INET, "127.0.0.1", "ipv4" },
	{ AF_INET6, "::1", "ipv6" },
};

/* A counter of this namespace from /proc/net/netstat or /proc/net/snmp,
 * whose lines come in pairs: "Prefix: names..." and "Prefix: values...".
 */
static long long counter(const char *file, const char *prefix, const char *name)
{
	char names[8192], values[8192];
	long long ret = -1;
	char *n, *v, *sn, *sv;
	FILE *f;

	f = fopen(file, "r");
	if (!f)
		return -1;
	while (fgets(names, sizeof(names), f) && fgets(values, sizeof(values), f)) {
		if (strncmp(names, prefix, strlen(prefix)))
			continue;
		n = strtok_r(names, "\n ", &sn);
		v = strtok_r(values, "\n ", &sv);
		while ((n = strtok_r(NULL, "\n ", &sn)) && (v = strtok_r(NULL, "\n ", &sv))) {
			if (!strcmp(n, name)) {
				ret = atoll(v);
				break;
			}
		}
		break;
	}
	fclose(f);
	return ret;
}

static long long tcpext(const char *name)
{
	return counter("/proc/net/netstat", "TcpExt:", name);
}

/* The children in a listener's accept queue (sk_ack_backlog) */
static int queued(int fd)
{
	struct tcp_info info = {};
	socklen_t len = sizeof(info);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len))
		return -1;
	return info.tcpi_unacked;
}

static int wait_queued(int fd, int want)
{
	int i, n = -1;

	for (i = 0; i < WAIT_MS / 10; i++) {
		n = queued(fd);
		if (n == want)
			break;
		usleep(10000);
	}
	return n;
}

static int reuseport_on(int fd, void *opts)
{
	int one = 1;

	return setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
}

static int listener(const struct family *fam, __u16 port, int backlog)
{
	struct network_helper_opts opts = {
		.backlog = backlog,
		.post_socket_cb = reuseport_on,
	};
	struct sockaddr_storage addr;
	socklen_t len;

	if (make_sockaddr(fam->family, fam->addr, port, &addr, &len))
		return -1;
	return start_server_addr(SOCK_STREAM, &addr, len, &opts);
}

static int client(const struct family *fam, __u16 port)
{
	struct network_helper_opts opts = { .timeout_ms = 1000 };

	return connect_to_addr_str(fam->family, SOCK_STREAM, fam->addr, port, &opts);
}

static int add_listener(struct test_reuseport_migrate_bpf *skel, __u32 idx, int fd)
{
	__u64 value = fd;

	return bpf_map__update_elem(skel->maps.listeners, &idx, sizeof(idx),
				    &value, sizeof(value), BPF_ANY);
}

static int attach(struct test_reuseport_migrate_bpf *skel, int fd)
{
	int prog_fd = bpf_program__fd(skel->progs.steer_and_migrate);

	return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog_fd,
			  sizeof(prog_fd));
}

static void reset_counts(struct test_reuseport_migrate_bpf *skel, __u32 verdict)
{
	memset(skel->bss->migrations, 0, sizeof(skel->bss->migrations));
	skel->bss->with_skb = 0;
	skel->bss->select_errors = 0;
	skel->bss->verdict = verdict;
}

static void check_program(struct test_reuseport_migrate_bpf *skel, int migrations)
{
	ASSERT_EQ(skel->bss->migrations[BPF_TCP_ESTABLISHED], migrations,
		  "migrations of children seen");
	ASSERT_EQ(skel->bss->with_skb, 0, "migrations with an skb");
	ASSERT_EQ(skel->bss->select_errors, 0, "selections refused");
	ASSERT_EQ(skel->bss->syn_errors, 0, "SYNs not steered");
}

static void close_all(int *fds, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

/*
 * L0 closes with NR_CHILDREN children; L1 (backlog 1) holds NR_ON_FULL and
 * is full; L2 has room. want_l1 and want_l2 are their queues after the
 * close, which migrates synchronously.
 */
static void stalled(struct test_reuseport_migrate_bpf *skel, const struct family *fam,
		    __u32 verdict, int want_l1, int want_l2)
{
	int l[3] = { -1, -1, -1 }, c[NR_CHILDREN + NR_ON_FULL];
	bool dropped = verdict == VERDICT_DROP;
	long long success, fail_bpf;
	__u16 port;
	int i;

	for (i = 0; i < ARRAY_SIZE(c); i++)
		c[i] = -1;
	if (write_sysctl("/proc/sys/net/ipv4/tcp_migrate_req", "2"))
		return;

	l[0] = listener(fam, 0, BACKLOG);
	if (!ASSERT_GE(l[0], 0, "listener 0"))
		goto out;
	port = ntohs(get_socket_local_port(l[0]));
	l[1] = listener(fam, port, 1);
	l[2] = listener(fam, port, BACKLOG);
	if (!ASSERT_GE(l[1], 0, "listener 1") || !ASSERT_GE(l[2], 0, "listener 2") ||
	    !ASSERT_OK(attach(skel, l[0]), "attach"))
		goto out;
	for (i = 0; i < ARRAY_SIZE(l); i++)
		if (!ASSERT_OK(add_listener(skel, i, l[i]), "sockarray"))
			goto out;

	for (i = 0; i < ARRAY_SIZE(c); i++) {
		skel->bss->syn_idx = i < NR_ON_FULL ? 1 : 0;
		c[i] = client(fam, port);
		if (!ASSERT_GE(c[i], 0, "client"))
			goto out;
	}
	if (!ASSERT_EQ(wait_queued(l[1], NR_ON_FULL), NR_ON_FULL, "listener 1 full") ||
	    !ASSERT_EQ(wait_queued(l[0], NR_CHILDREN), NR_CHILDREN, "listener 0 queue"))
		goto out;

	reset_counts(skel, verdict);
	skel->bss->select_idx = 1;
	success = tcpext("TCPMigrateReqSuccess");
	fail_bpf = tcpext("TCPMigrateReqFailBpf");
	close(l[0]);
	l[0] = -1;

	ASSERT_EQ(queued(l[1]), want_l1, "listener 1 after the close");
	ASSERT_EQ(queued(l[2]), want_l2, "listener 2 after the close");
	check_program(skel, NR_CHILDREN);
	ASSERT_EQ(tcpext("TCPMigrateReqSuccess") - success, dropped ? 0 : NR_CHILDREN,
		  "TCPMigrateReqSuccess");
	ASSERT_EQ(tcpext("TCPMigrateReqFailBpf") - fail_bpf, dropped ? NR_CHILDREN : 0,
		  "TCPMigrateReqFailBpf");
out:
	close_all(c, ARRAY_SIZE(c));
	close_all(l, ARRAY_SIZE(l));
}

/*
 * The group's only listener closes with NR_CHILDREN children and is parked;
 * one more client comes in the gap; a new listener adopts them all, in a
 * close that runs on a workqueue.
 */
static void park(struct test_reuseport_migrate_bpf *skel, const struct family *fam,
		 __u32 verdict)
{
	const int all = NR_CHILDREN + 1;
	bool dropped = verdict == VERDICT_DROP;
	int want_ok = dropped ? 0 : all, want_fail = dropped ? all : 0;
	long long success, fail_bpf, adopted, opens;
	int l[2] = { -1, -1 }, c[NR_CHILDREN + 1];
	char byte;
	__u16 port;
	int i;

	for (i = 0; i < ARRAY_SIZE(c); i++)
		c[i] = -1;
	if (write_sysctl("/proc/sys/net/ipv4/tcp_migrate_req_grace_ms", GRACE_MS))
		return;

	l[0] = listener(fam, 0, BACKLOG);
	if (!ASSERT_GE(l[0], 0, "listener 0"))
		goto out;
	port = ntohs(get_socket_local_port(l[0]));
	if (!ASSERT_OK(attach(skel, l[0]), "attach") ||
	    !ASSERT_OK(add_listener(skel, 0, l[0]), "sockarray"))
		goto out;
	skel->bss->syn_idx = 0;
	for (i = 0; i < NR_CHILDREN; i++) {
		c[i] = client(fam, port);
		if (!ASSERT_GE(c[i], 0, "client of listener 0"))
			goto out;
	}
	if (!ASSERT_EQ(wait_queued(l[0], NR_CHILDREN), NR_CHILDREN, "listener 0 queue"))
		goto out;

	reset_counts(skel, verdict);
	success = tcpext("TCPMigrateReqSuccess");
	fail_bpf = tcpext("TCPMigrateReqFailBpf");
	adopted = tcpext("TCPMigrateReqAdopted");
	opens = counter("/proc/net/snmp", "Tcp:", "PassiveOpens");
	close(l[0]);
	l[0] = -1;

	/* Parked, the port still answers: wait for the gap's child, so that
	 * it is a child, not a request, when the adoption migrates it.
	 */
	c[NR_CHILDREN] = client(fam, port);
	if (!ASSERT_GE(c[NR_CHILDREN], 0, "client of the gap"))
		goto out;
	for (i = 0; i < WAIT_MS / 10; i++) {
		if (counter("/proc/net/snmp", "Tcp:", "PassiveOpens") - opens == 1)
			break;
		usleep(10000);
	}
	if (!ASSERT_EQ(counter("/proc/net/snmp", "Tcp:", "PassiveOpens") - opens, 1,
		       "child of the gap"))
		goto out;

	l[1] = listener(fam, port, BACKLOG);
	if (!ASSERT_GE(l[1], 0, "adopting listener"))
		goto out;
	for (i = 0; i < WAIT_MS / 10; i++) {
		if (tcpext("TCPMigrateReqSuccess") - success == want_ok &&
		    tcpext("TCPMigrateReqFailBpf") - fail_bpf == want_fail)
			break;
		usleep(10000);
	}
	ASSERT_EQ(tcpext("TCPMigrateReqSuccess") - success, want_ok, "TCPMigrateReqSuccess");
	ASSERT_EQ(tcpext("TCPMigrateReqFailBpf") - fail_bpf, want_fail, "TCPMigrateReqFailBpf");
	ASSERT_EQ(tcpext("TCPMigrateReqAdopted") - adopted, 1, "TCPMigrateReqAdopted");
	ASSERT_EQ(queued(l[1]), want_ok, "adopting listener's queue");
	check_program(skel, all);
	if (dropped) {
		for (i = 0; i < all; i++)
			ASSERT_TRUE(recv(c[i], &byte, 1, 0) < 0 && errno == ECONNRESET,
				    "client reset");
	}
out:
	/* No park may outlive the subtest: closing l[1] must not park. */
	write_sysctl("/proc/sys/net/ipv4/tcp_migrate_req_grace_ms", "0");
	close_all(c, ARRAY_SIZE(c));
	close_all(l, ARRAY_SIZE(l));
}

void test_reuseport_migrate_bpf(void)
{
	static const struct {
		const char *name;
		bool park;
		__u32 verdict;
		int want_l1, want_l2;
	} cases[] = {
		{ "stalled_pass", false, VERDICT_PASS, NR_ON_FULL, NR_CHILDREN },
		{ "stalled_select_full", false, VERDICT_SELECT, NR_ON_FULL + NR_CHILDREN, 0 },
		{ "stalled_drop", false, VERDICT_DROP, NR_ON_FULL, 0 },
		{ "park_pass", true, VERDICT_PASS },
		{ "park_drop", true, VERDICT_DROP },
	};
	struct test_reuseport_migrate_bpf *skel;
	struct netns_obj *netns;
	char name[64];
	int i, j;

	skel = test_reuseport_migrate_bpf__open_and_load();
	if (!ASSERT_OK_PTR(skel, "open_and_load"))
		return;

	for (i = 0; i < ARRAY_SIZE(families); i++) {
		for (j = 0; j < ARRAY_SIZE(cases); j++) {
			snprintf(name, sizeof(name), "%s_%s", families[i].name, cases[j].name);
			if (!test__start_subtest(name))
				continue;
			/* The sysctls are per namespace: each subtest has its own. */
			netns = netns_new(NETNS, true);
			if (!ASSERT_OK_PTR(netns, "netns_new"))
				continue;
			if (cases[j].park)
				park(skel, &families[i], cases[j].verdict);
			else
				stalled(skel, &families[i], cases[j].verdict,
					cases[j].want_l1, cases[j].want_l2);
			netns_free(netns);
		}
	}
	test_reuseport_migrate_bpf__destroy(skel);
}
