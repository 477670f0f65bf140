// SPDX-License-Identifier: GPL-2.0
/*
 * A SO_REUSEPORT TCP listener that closes while a handshake completes on
 * it, with net.ipv4.tcp_migrate_req=1 and another listener of the group
 * alive. A kprobe (reuseport_migrate_race.bpf.c) holds the kernel inside
 * the race window while the test closes the listener, so each case happens
 * every run:
 *
 * closing_listener: close() has set SHUTDOWN_MASK on the listener, which
 *	still listens, when a handshake makes a child from it. The close
 *	migrates the child, which must not be shut down.
 * closed_during_ack: the final ACK has made the child; the listener closes
 *	before the child is queued on it.
 * shutdown_before_cookie_queue: the same for a syncookie child, made
 *	when the cookie ACK arrives, with the listener shut down rather
 *	than closed: a syncookie request holds no reference on its
 *	listener, so a closed one may have left its group by then, and
 *	the child has nowhere to go.
 * closed_before_fastopen_queue: the same for a Fast Open child, made when
 *	the SYN arrives with data.
 *
 * In each, the child must reach the other listener and carry the
 * connection both ways, not be reset or shut down.
 *
 * The *_prog twins of the last three attach a select-or-migrate program
 * (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE) to the group, which selects the
 * other listener. It must be run once for the late migration and be
 * shown what a program is shown on that path: at the final ACK, the
 * request (TCP_NEW_SYN_RECV) and the ACK; for a syncookie child, the child
 * (TCP_SYN_RECV) and the ACK that made it; for a Fast Open child, the
 * child and no skb (md->len 0), as when close() hands one on. A program
 * tells the last two apart by md->len.
 *
 * A held path spins on its CPU with interrupts off while the test runs
 * on another: it needs two CPUs. Every test runs in a network namespace
 * of its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "../kselftest_harness.h"
#include "reuseport_migrate_race.h"

#define BPF_OBJ		"reuseport_migrate_race.bpf.o"
#define KPROBE_OPT	"/proc/sys/debug/kprobes-optimization"
#define KPROBE_PMU	"/sys/bus/event_source/devices/kprobe"
#define MIGRATE_REQ	"/proc/sys/net/ipv4/tcp_migrate_req"

/* How long to wait for what the kernel does on its own (a gate to be
 * reached, a child to be queued). A held path is let go after 8 s
 * anyway: the steps the test takes meanwhile are few, but an emulated
 * guest on a busy host can be slow at them.
 */
#define EVENT_TIMEOUT_MS	8000

/* The gate's fields, which the program writes while the test reads them
 * and the other way round.
 */
#define gate_get(field)		__atomic_load_n(&(field), __ATOMIC_ACQUIRE)
#define gate_set(field, val)	__atomic_store_n(&(field), (val), __ATOMIC_RELEASE)

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Waits until a path is held at the gate (@holding) or is not; true if
 * so within the timeout.
 */
static bool gate_wait(struct gate *g, bool holding)
{
	long long end = now_ms() + EVENT_TIMEOUT_MS;

	while ((gate_get(g->hold) == GATE_HOLDING) != holding &&
	       now_ms() < end)
		usleep(1000);
	return (gate_get(g->hold) == GATE_HOLDING) == holding;
}

static int sysctl_write(const char *path, const char *val)
{
	ssize_t ret;
	int fd;

	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	ret = write(fd, val, strlen(val));
	if (ret < 0)
		ret = -errno;
	close(fd);
	return ret < 0 ? ret : 0;
}

/* The program's object, beside the test's binary. */
static const char *bpf_obj_path(void)
{
	static char path[PATH_MAX];
	char exe[PATH_MAX];
	ssize_t n;

	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return BPF_OBJ;
	exe[n] = '\0';
	snprintf(path, sizeof(path), "%s/%s", dirname(exe), BPF_OBJ);
	return path;
}

static void loopback(int family, unsigned short port,
		     struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*len = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		sin6->sin6_addr = in6addr_loopback;
		*len = sizeof(*sin6);
	}
}

/* A @proto listener with SO_REUSEPORT on @port of the loopback address
 * (0: any free port, then read back into @port); -1 on error, with errno.
 */
static int listener_proto(int family, int proto, unsigned short *port,
			  int fastopen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1;

	fd = socket(family, SOCK_STREAM, proto);
	if (fd < 0)
		return -1;
	loopback(family, *port, &ss, &len);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) ||
	    (fastopen && setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN, &fastopen,
				    sizeof(fastopen))) ||
	    bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 16) ||
	    getsockname(fd, (struct sockaddr *)&ss, &len)) {
		close(fd);
		return -1;
	}
	*port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

static int listener(int family, unsigned short *port, int fastopen)
{
	return listener_proto(family, 0, port, fastopen);
}

/* fd ready for @events within @ms milliseconds */
static bool ready(int fd, short events, int ms)
{
	struct pollfd pfd = { .fd = fd, .events = events };

	return poll(&pfd, 1, ms) == 1 && (pfd.revents & events);
}

static int accept_within(int fd, int ms)
{
	return ready(fd, POLLIN, ms) ? accept(fd, NULL, NULL) : -1;
}

/* What @fd received within @ms milliseconds, as a string; "" if nothing. */
static const char *recv_within(int fd, char *buf, size_t size, int ms)
{
	ssize_t n = 0;

	if (ready(fd, POLLIN, ms))
		n = recv(fd, buf, size - 1, MSG_DONTWAIT);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* The two CPUs the test runs on: the held path's and the test's. */
static int cpus[2];

static bool two_cpus(void)
{
	cpu_set_t set;
	int cpu, n = 0;

	if (sched_getaffinity(0, sizeof(set), &set))
		return false;
	for (cpu = 0; cpu < CPU_SETSIZE && n < 2; cpu++)
		if (CPU_ISSET(cpu, &set))
			cpus[n++] = cpu;
	return n == 2;
}

static int pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* What a thread of the test does on the held path's CPU. */
struct step {
	int family;
	unsigned short port;
	enum { CLOSE, LISTEN, CONNECT, FASTOPEN } what;
	int fd;		/* CLOSE, LISTEN: the listener; else the client made */
	int err;	/* errno of the step, 0 if it succeeded */
};

static void *run_step(void *arg)
{
	struct step *s = arg;
	struct sockaddr_storage ss;
	socklen_t len;
	int ret;

	s->err = pin(cpus[0]);
	if (s->err)
		return NULL;
	if (s->what == CLOSE) {
		s->err = close(s->fd) ? errno : 0;
		return NULL;
	}
	if (s->what == LISTEN) {
		s->err = listen(s->fd, 16) ? errno : 0;
		return NULL;
	}
	s->fd = socket(s->family, SOCK_STREAM, 0);
	if (s->fd < 0) {
		s->err = errno;
		return NULL;
	}
	loopback(s->family, s->port, &ss, &len);
	if (s->what == CONNECT)
		ret = connect(s->fd, (struct sockaddr *)&ss, len);
	else
		ret = sendto(s->fd, "ping", 4, MSG_FASTOPEN,
			     (struct sockaddr *)&ss, len) == 4 ? 0 : -1;
	s->err = ret ? errno : 0;
	return NULL;
}

FIXTURE(race)
{
	struct bpf_object *obj;
	struct bpf_link *link;
	struct gate *gate;
	size_t gate_len;
	int l0, l1, client, child;
	unsigned short port;
	char kprobe_opt[16];
};

FIXTURE_VARIANT(race)
{
	int family;
};

FIXTURE_VARIANT_ADD(race, ipv4)
{
	.family = AF_INET,
};

FIXTURE_VARIANT_ADD(race, ipv6)
{
	.family = AF_INET6,
};

FIXTURE_SETUP(race)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int fd, n;

	self->l0 = -1;
	self->l1 = -1;
	self->client = -1;
	self->child = -1;
	self->kprobe_opt[0] = '\0';
	self->gate = NULL;
	if (!two_cpus())
		SKIP(return, "needs two CPUs");

	ASSERT_EQ(unshare(CLONE_NEWNET), 0);
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	ASSERT_GE(fd, 0);
	ASSERT_EQ(ioctl(fd, SIOCGIFFLAGS, &ifr), 0);
	ifr.ifr_flags |= IFF_UP;
	ASSERT_EQ(ioctl(fd, SIOCSIFFLAGS, &ifr), 0);
	close(fd);
	n = sysctl_write(MIGRATE_REQ, "1");
	if (n == -ENOENT)
		SKIP(return, "no net.ipv4.tcp_migrate_req");
	ASSERT_EQ(n, 0);
	/* what the gates need of the kernel, before the test can fail */
	if (access(KPROBE_PMU, F_OK))
		SKIP(return, "no kprobe PMU (CONFIG_KPROBE_EVENTS, CONFIG_PERF_EVENTS)");
	if (libbpf_probe_bpf_helper(BPF_PROG_TYPE_KPROBE, BPF_FUNC_loop,
				    NULL) != 1)
		SKIP(return, "no bpf_loop() for kprobe programs");

	self->obj = bpf_object__open_file(bpf_obj_path(), NULL);
	ASSERT_NE(self->obj, NULL) TH_LOG("cannot open %s", bpf_obj_path());
	ASSERT_EQ(bpf_object__load(self->obj), 0);
	fd = bpf_object__find_map_fd_by_name(self->obj, "gate_map");
	ASSERT_GE(fd, 0);
	self->gate_len = sysconf(_SC_PAGESIZE);
	self->gate = mmap(NULL, self->gate_len, PROT_READ | PROT_WRITE,
			  MAP_SHARED, fd, 0);
	ASSERT_NE(self->gate, MAP_FAILED) {
		self->gate = NULL;
	}

	ASSERT_EQ(pin(cpus[1]), 0);

	self->l0 = listener(variant->family, &self->port, 0);
	ASSERT_GE(self->l0, 0);

	/* An unoptimized kprobe runs its program from the breakpoint
	 * handler. Once optimized into a jump, text patching would wait for
	 * the CPU that a gate holds with interrupts off. Last in the setup,
	 * as only the teardown puts the global sysctl back, and it does not
	 * run when the setup fails.
	 */
	fd = open(KPROBE_OPT, O_RDONLY);
	if (fd >= 0) {
		n = read(fd, self->kprobe_opt, sizeof(self->kprobe_opt) - 1);
		self->kprobe_opt[n > 0 ? n : 0] = '\0';
		close(fd);
		if (sysctl_write(KPROBE_OPT, "0"))
			self->kprobe_opt[0] = '\0';
		ASSERT_NE(self->kprobe_opt[0], '\0');
	}
}

FIXTURE_TEARDOWN(race)
{
	/* A test that failed while a path was held lets it go first: the
	 * kprobe's removal would wait for the held CPU.
	 */
	if (self->link) {
		gate_set(self->gate->armed, 0);
		gate_set(self->gate->release, 1);
		gate_wait(self->gate, false);
	}
	bpf_link__destroy(self->link);
	if (self->gate)
		munmap(self->gate, self->gate_len);
	bpf_object__close(self->obj);
	if (self->kprobe_opt[0])
		sysctl_write(KPROBE_OPT, self->kprobe_opt);
	if (self->l0 >= 0)
		close(self->l0);
	if (self->l1 >= 0)
		close(self->l1);
	if (self->client >= 0)
		close(self->client);
	if (self->child >= 0)
		close(self->child);
}

static void gate_arm(struct _test_data_race *self)
{
	gate_set(self->gate->port, self->port);
	gate_set(self->gate->armed, 1);
}

/* Attaches the program @name to the first of @funcs the kernel has (none:
 * where its section says), unarmed.
 */
static int gate_attach_unarmed(struct _test_data_race *self,
			       const char *name, const char * const *funcs)
{
	struct bpf_program *prog;

	prog = bpf_object__find_program_by_name(self->obj, name);
	if (!prog)
		return -ENOENT;
	if (!funcs)
		self->link = bpf_program__attach(prog);
	for (; funcs && *funcs; funcs++) {
		self->link = bpf_program__attach_kprobe(prog, false, *funcs);
		/* only a function this kernel lacks sends us to the next */
		if (self->link || errno != ENOENT)
			break;
	}
	return self->link ? 0 : -errno;
}

/* As gate_attach_unarmed(), armed for the listeners of the test's port. */
static int gate_attach(struct _test_data_race *self, const char *name,
		       const char * const *funcs)
{
	int err = gate_attach_unarmed(self, name, funcs);

	if (!err)
		gate_arm(self);
	return err;
}

/* Lets the held path go; true if it was held once and released by us,
 * not by the gate's own limit.
 */
static bool gate_release(struct _test_data_race *self)
{
	gate_set(self->gate->release, 1);
	gate_wait(self->gate, false);
	return gate_get(self->gate->hold) == GATE_RELEASED &&
	       gate_get(self->gate->held) == 1;
}

/* From /proc/net/tcp or tcp6, the rx_queue of the socket in @state on
 * local port @lport and remote port @rport (0 for a listener): for a
 * listener, the length of its accept queue; -1 if there is no such socket.
 */
static int proc_tcp(int family, unsigned short lport, unsigned short rport,
		    unsigned int state)
{
	unsigned int local, remote, st, rx;
	int ret = -1;
	char line[256];
	FILE *f;

	f = fopen(family == AF_INET ? "/proc/net/tcp" : "/proc/net/tcp6", "r");
	if (!f)
		return -1;
	while (ret < 0 && fgets(line, sizeof(line), f))
		if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x %*x:%x",
			   &local, &remote, &st, &rx) == 4 &&
		    local == lport && remote == rport && st == state)
			ret = rx;
	fclose(f);
	return ret;
}

#define ST_ESTABLISHED	0x01
#define ST_LISTEN	0x0A

/* proc_tcp() gives @rx within the timeout. */
static bool proc_tcp_reaches(int family, unsigned short lport,
			     unsigned short rport, unsigned int state, int rx)
{
	long long end = now_ms() + EVENT_TIMEOUT_MS;

	while (proc_tcp(family, lport, rport, state) != rx && now_ms() < end)
		usleep(1000);
	return proc_tcp(family, lport, rport, state) == rx;
}

/* The connection of the migrated child: the client's data reaches it, and
 * its reply reaches the client.
 */
static void exchange(struct __test_metadata *_metadata,
		     struct _test_data_race *self, bool sent)
{
	char buf[16];

	self->child = accept_within(self->l1, EVENT_TIMEOUT_MS);
	ASSERT_GE(self->child, 0) TH_LOG("no child on the other listener");
	if (!sent)
		ASSERT_EQ(send(self->client, "ping", 4, MSG_NOSIGNAL), 4);
	ASSERT_STREQ(recv_within(self->child, buf, sizeof(buf),
				 EVENT_TIMEOUT_MS), "ping");
	ASSERT_EQ(send(self->child, "pong", 4, MSG_NOSIGNAL), 4)
		TH_LOG("the child cannot send: %s", strerror(errno));
	ASSERT_STREQ(recv_within(self->client, buf, sizeof(buf),
				 EVENT_TIMEOUT_MS), "pong");
}

TEST_F(race, closing_listener)
{
	struct step close_l0 = { .what = CLOSE, .fd = self->l0 };
	struct sockaddr_storage ss;
	socklen_t len;
	pthread_t t;

	ASSERT_EQ(gate_attach(self, "close_gate", NULL), 0);
	self->l0 = -1;
	ASSERT_EQ(pthread_create(&t, NULL, run_step, &close_l0), 0);
	ASSERT_TRUE(gate_wait(self->gate, true))
		TH_LOG("close() never reached the gate");

	/* The listener still listens: the handshake completes on it. */
	self->client = socket(variant->family, SOCK_STREAM, 0);
	ASSERT_GE(self->client, 0);
	loopback(variant->family, self->port, &ss, &len);
	ASSERT_EQ(connect(self->client, (struct sockaddr *)&ss, len), 0)
		TH_LOG("connect: %s", strerror(errno));
	/* The final ACK may still be on its way: the case needs the child
	 * queued on the closing listener before its close goes on.
	 */
	ASSERT_TRUE(proc_tcp_reaches(variant->family, self->port, 0,
				     ST_LISTEN, 1))
		TH_LOG("the child never reached the closing listener's queue");
	self->l1 = listener(variant->family, &self->port, 0);
	ASSERT_GE(self->l1, 0);

	ASSERT_TRUE(gate_release(self));
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(close_l0.err, 0);
	exchange(_metadata, self, false);
}

/* What the group's migrate program must be shown, where a case has one:
 * the state of migrating_sk, and whether an skb comes with it.
 */
struct shown {
	unsigned int state;
	bool skb;
};

/* Attaches migrate_to_l1 to the group of the first listener. */
static int prog_attach(struct _test_data_race *self)
{
	struct bpf_program *prog;
	int fd;

	prog = bpf_object__find_program_by_name(self->obj, "migrate_to_l1");
	if (!prog)
		return -ENOENT;
	fd = bpf_program__fd(prog);
	return setsockopt(self->l0, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &fd,
			  sizeof(fd)) ? -errno : 0;
}

/* Makes the second listener the one the program selects. */
static int prog_target(struct _test_data_race *self)
{
	struct bpf_map *map;
	__u64 fd = self->l1;
	__u32 zero = 0;

	map = bpf_object__find_map_by_name(self->obj, "l1_map");
	if (!map)
		return -ENOENT;
	return bpf_map__update_elem(map, &zero, sizeof(zero), &fd, sizeof(fd),
				    BPF_ANY);
}

static int prog_shown(struct _test_data_race *self, struct migration *m)
{
	struct bpf_map *map;
	__u32 zero = 0;

	map = bpf_object__find_map_by_name(self->obj, "migration_map");
	if (!map)
		return -ENOENT;
	return bpf_map__lookup_elem(map, &zero, sizeof(zero), m, sizeof(*m), 0);
}

/* A child made by the held @what is about to be queued on the first
 * listener, at the gate on the first of @funcs that the kernel has; the
 * listener closes meanwhile, or with @shut is shut down. With @prog, a
 * migrate program selects the other listener, and must have been shown
 * the migration once, as @prog says.
 */
static void closed_before_queued(struct __test_metadata *_metadata,
				 struct _test_data_race *self, int family,
				 int what, const char * const *funcs, bool shut,
				 const struct shown *prog)
{
	struct step s = { .family = family, .port = self->port, .what = what };
	struct migration m;
	pthread_t t;
	int ret;

	if (prog) {
		ret = prog_attach(self);
		ASSERT_EQ(ret, 0) TH_LOG("attach: %s", strerror(-ret));
	}
	ASSERT_EQ(gate_attach(self, "listener_gate", funcs), 0);
	ASSERT_EQ(pthread_create(&t, NULL, run_step, &s), 0);
	ASSERT_TRUE(gate_wait(self->gate, true))
		TH_LOG("no handshake reached the gate");

	self->l1 = listener(family, &self->port, what == FASTOPEN ? 16 : 0);
	ASSERT_GE(self->l1, 0);
	if (prog) {
		ret = prog_target(self);
		ASSERT_EQ(ret, 0) TH_LOG("sockarray: %s", strerror(-ret));
	}
	if (shut) {
		ASSERT_EQ(shutdown(self->l0, SHUT_RDWR), 0);
	} else {
		ASSERT_EQ(close(self->l0), 0);
		self->l0 = -1;
	}

	ASSERT_TRUE(gate_release(self));
	ASSERT_EQ(pthread_join(t, NULL), 0);
	self->client = s.fd;
	ASSERT_EQ(s.err, 0) TH_LOG("client: %s", strerror(s.err));
	if (prog) {
		ASSERT_EQ(prog_shown(self, &m), 0);
		ASSERT_EQ(m.count, 1) TH_LOG("the program ran %u times", m.count);
		ASSERT_EQ(m.state, prog->state);
		ASSERT_EQ(m.len > 0, prog->skb) TH_LOG("skb of %u bytes", m.len);
		ASSERT_EQ(m.select_errors, 0);
	}
	exchange(_metadata, self, what == FASTOPEN);
}

static const char * const hashdance[] = {
	"inet_csk_complete_hashdance_migrate",
	"inet_csk_complete_hashdance",
	NULL,
};

static const char * const get_port[] = {
	"inet_csk_get_port",
	NULL,
};

static const char * const queue_add[] = {
	"inet_csk_reqsk_queue_add_migrate",
	"inet_csk_reqsk_queue_add",
	NULL,
};

/* The late migrations, as a migrate program is shown them: at the final
 * ACK, the request and the ACK's skb; a syncookie child, in TCP_SYN_RECV,
 * and the ACK that made it; a Fast Open child, in TCP_SYN_RECV, and no
 * skb, as when close() hands one on.
 */
static const struct shown final_ack_shown = { BPF_TCP_NEW_SYN_RECV, true };
static const struct shown cookie_shown = { BPF_TCP_SYN_RECV, true };
static const struct shown fastopen_shown = { BPF_TCP_SYN_RECV, false };

static void cookie_queue(struct __test_metadata *_metadata,
			 struct _test_data_race *self, int family,
			 const struct shown *prog)
{
	ASSERT_EQ(sysctl_write("/proc/sys/net/ipv4/tcp_syncookies", "2"), 0);
	closed_before_queued(_metadata, self, family, CONNECT, queue_add, true,
			     prog);
}

static void fastopen_queue(struct __test_metadata *_metadata,
			   struct _test_data_race *self, int family,
			   const struct shown *prog)
{
	int qlen = 16;

	/* Client and server, and no cookie needed either way. */
	ASSERT_EQ(sysctl_write("/proc/sys/net/ipv4/tcp_fastopen", "519"), 0);
	ASSERT_EQ(setsockopt(self->l0, IPPROTO_TCP, TCP_FASTOPEN, &qlen,
			     sizeof(qlen)), 0);
	closed_before_queued(_metadata, self, family, FASTOPEN, queue_add,
			     false, prog);
}

TEST_F(race, closed_during_ack)
{
	closed_before_queued(_metadata, self, variant->family, CONNECT,
			     hashdance, false, NULL);
}

TEST_F(race, closed_during_ack_prog)
{
	closed_before_queued(_metadata, self, variant->family, CONNECT,
			     hashdance, false, &final_ack_shown);
}

TEST_F(race, shutdown_before_cookie_queue)
{
	cookie_queue(_metadata, self, variant->family, NULL);
}

TEST_F(race, shutdown_before_cookie_queue_prog)
{
	cookie_queue(_metadata, self, variant->family, &cookie_shown);
}

TEST_F(race, closed_before_fastopen_queue)
{
	fastopen_queue(_metadata, self, variant->family, NULL);
}

TEST_F(race, closed_before_fastopen_queue_prog)
{
	fastopen_queue(_metadata, self, variant->family, &fastopen_shown);
}

/* A listener that was shut down listens again, and its listen() fails:
 * another socket, without SO_REUSEPORT, took the port meanwhile.
 * listen() sets TCP_LISTEN before get_port() decides, and a request that
 * the listener made before its shutdown completes on it in between. The
 * child must not stay in the queue of a socket that no longer listens,
 * where its close() would never look: the failed listen() hands it on,
 * here to nobody, so the client is reset. With @lproto IPPROTO_MPTCP the
 * listener is an MPTCP socket, and the child waits in the queue of its
 * subflow: an MPTCP child with an MPTCP client (@cproto), else a plain
 * TCP one, which MPTCP's cleanup leaves to TCP's.
 */
static void relisten_failed(struct __test_metadata *_metadata,
			    struct _test_data_race *self, int family,
			    int lproto, int cproto)
{
	struct step relisten = { .what = LISTEN };
	int defer = 30, one = 1, rx;
	struct sockaddr_storage ss;
	unsigned short cport;
	socklen_t len;
	char buf[16];
	pthread_t t;

	/* The listener keeps its port across the shutdown only if the port
	 * was bound explicitly: a listener bound to port 0 gives it back, and
	 * listens again on another one.
	 */
	close(self->l0);
	self->l0 = listener_proto(family, lproto, &self->port, 0);
	if (self->l0 < 0 && lproto && (errno == EPROTONOSUPPORT ||
				       errno == ENOPROTOOPT))
		SKIP(return, "no MPTCP: %s", strerror(errno));
	ASSERT_GE(self->l0, 0);
	relisten.fd = self->l0;
	/* Attached before the request is made, armed once the port is taken:
	 * the request's SYN+ACK timer drops it if it fires while the
	 * listener is shut down, 1 s after the SYN.
	 */
	ASSERT_EQ(gate_attach_unarmed(self, "listener_gate", get_port), 0);
	/* The client's bare final ACK leaves the request waiting for data. */
	ASSERT_EQ(setsockopt(self->l0, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer,
			     sizeof(defer)), 0);
	ASSERT_EQ(setsockopt(self->l0, SOL_SOCKET, SO_REUSEADDR, &one,
			     sizeof(one)), 0);
	self->client = socket(family, SOCK_STREAM, cproto);
	ASSERT_GE(self->client, 0);
	loopback(family, self->port, &ss, &len);
	ASSERT_EQ(connect(self->client, (struct sockaddr *)&ss, len), 0);
	ASSERT_EQ(getsockname(self->client, (struct sockaddr *)&ss, &len), 0);
	cport = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	ASSERT_EQ(shutdown(self->l0, SHUT_RDWR), 0);

	/* The port taken, by a socket without SO_REUSEPORT. */
	self->l1 = socket(family, SOCK_STREAM, 0);
	ASSERT_GE(self->l1, 0);
	loopback(family, self->port, &ss, &len);
	ASSERT_EQ(setsockopt(self->l1, SOL_SOCKET, SO_REUSEADDR, &one,
			     sizeof(one)), 0);
	ASSERT_EQ(bind(self->l1, (struct sockaddr *)&ss, len), 0);
	ASSERT_EQ(listen(self->l1, 16), 0);

	gate_arm(self);
	ASSERT_EQ(pthread_create(&t, NULL, run_step, &relisten), 0);
	ASSERT_TRUE(gate_wait(self->gate, true))
		TH_LOG("listen() never reached the gate");

	/* The data completes the request on the listener, held in listen(),
	 * and waits unread in the child; MPTCP moves it on to the child's
	 * MPTCP socket, which leaves the subflow with none.
	 */
	ASSERT_EQ(send(self->client, "ping", 4, MSG_NOSIGNAL), 4);
	rx = cproto ? 0 : 4;
	ASSERT_TRUE(proc_tcp_reaches(family, self->port, cport,
				     ST_ESTABLISHED, rx))
		TH_LOG("no child made from the listening-again listener");

	ASSERT_TRUE(gate_release(self));
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(relisten.err, EADDRINUSE);
	ASSERT_EQ(close(self->l0), 0);
	self->l0 = -1;

	ASSERT_TRUE(ready(self->client, POLLIN, EVENT_TIMEOUT_MS))
		TH_LOG("the client is neither served nor reset");
	ASSERT_EQ(recv(self->client, buf, sizeof(buf), MSG_DONTWAIT), -1);
	ASSERT_EQ(errno, ECONNRESET);
	ASSERT_EQ(proc_tcp(family, self->port, cport, ST_ESTABLISHED), -1)
		TH_LOG("the child is left behind");
}

TEST_F(race, relisten_failed)
{
	relisten_failed(_metadata, self, variant->family, 0, 0);
}

TEST_F(race, relisten_failed_mptcp)
{
	relisten_failed(_metadata, self, variant->family, IPPROTO_MPTCP,
			IPPROTO_MPTCP);
}

TEST_F(race, relisten_failed_mptcp_fallback)
{
	relisten_failed(_metadata, self, variant->family, IPPROTO_MPTCP, 0);
}

TEST_HARNESS_MAIN
