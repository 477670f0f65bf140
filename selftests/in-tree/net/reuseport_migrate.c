// SPDX-License-Identifier: GPL-2.0
/*
 * Migration of the connections of a closing SO_REUSEPORT TCP listener:
 * net.ipv4.tcp_migrate_req (1: by hash, 2: never into a full accept queue
 * while another listener has room) and the parking of the last listener
 * of a group by net.ipv4.tcp_migrate_req_grace_ms, with the
 * TCPMigrateReq* counters of /proc/net/netstat and the
 * tcp:tcp_reuseport_migrate and tcp:tcp_reuseport_park tracepoints.
 *
 * Every test runs in a network namespace of its own, so the sysctls start
 * at their defaults and the counters at zero.
 *
 * The tests of tcp_migrate_req=1 check upstream's behaviour and pass on
 * any kernel that has it (5.14 on). The others need
 * tcp_migrate_req_grace_ms: on a kernel without it they are skipped, and
 * on a kernel with it every behaviour is asserted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"

#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif

#define MIGRATE_REQ	"/proc/sys/net/ipv4/tcp_migrate_req"
#define GRACE		"/proc/sys/net/ipv4/tcp_migrate_req_grace_ms"

#define SUCCESS		"TCPMigrateReqSuccess"
#define FAILURE		"TCPMigrateReqFailure"
#define NO_LISTENER	"TCPMigrateReqFailNoListener"
#define PARKED		"TCPMigrateReqParked"
#define ADOPTED		"TCPMigrateReqAdopted"
#define EXPIRED		"TCPMigrateReqParkExpired"
#define EVICTED		"TCPMigrateReqParkEvicted"
#define CANCELLED	"TCPMigrateReqParkCancelled"
#define DESTROYED	"TCPMigrateReqParkDestroyed"

/* The reasons of a failed migration: they add up to TCPMigrateReqFailure. */
static const char * const fail_reasons[] = {
	NO_LISTENER,
	"TCPMigrateReqFailDisabled",
	"TCPMigrateReqFailBpf",
	"TCPMigrateReqFailNoMem",
	"TCPMigrateReqFailQueueFull",
	"TCPMigrateReqFailTargetClosed",
	"TCPMigrateReqFailExpired",
	"TCPMigrateReqFailOther",
};

/* How a park ends: once no park is live, they add up to the parks. */
static const char * const park_ends[] = {
	ADOPTED, EXPIRED, EVICTED, CANCELLED, DESTROYED,
};

/* How long to wait for something the kernel does on its own. */
#define EVENT_TIMEOUT_MS	10000

#define NR_LISTENERS	4
#define MAX_CLIENTS	32

/* The clients of the parking tests: children queued before the close,
 * handshakes in flight over it, and clients that connect in the gap.
 */
#define QUEUED		4
#define IN_FLIGHT	2
#define IN_GAP		3

/* The grace of the parks that a listener adopts, or that expire or are
 * destroyed: long enough for a slow (debug, emulated) kernel to connect
 * the clients of the gap well within it.
 */
#define GRACE_MS	5000

/* The harness's timeout of a parking test, in seconds: its grace and more
 * steps than the others, which can take over the default 30 s on a debug
 * kernel.
 */
#define PARK_TIMEOUT	90

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Polls @cond every 10 ms for up to @ms milliseconds; true once it holds. */
#define wait_for(cond, ms)						\
({									\
	long long __end = now_ms() + (ms);				\
	bool __ok;							\
									\
	for (;;) {							\
		__ok = (cond);						\
		if (__ok || now_ms() >= __end)				\
			break;						\
		usleep(10000);						\
	}								\
	__ok;								\
})

/* 0, or -errno of the write(2) of @val to the sysctl file @path. */
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

/* The value of the sysctl file @path, -1 if it cannot be read. */
static long sysctl_read(const char *path)
{
	char buf[32] = {};
	ssize_t len;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (len <= 0)
		return -1;
	return strtol(buf, NULL, 10);
}

/* Whether the kernel has listener parking, the last feature of the series
 * these tests are for: its tests are skipped without it.
 */
static bool has_grace(void)
{
	return access(GRACE, F_OK) == 0;
}

/* The TcpExt counter @name of this namespace, -1 if there is none. */
static long long mib(const char *name)
{
	char names[8192], values[8192], *n, *v, *sn, *sv;
	long long ret = -1;
	FILE *f;

	f = fopen("/proc/net/netstat", "r");
	if (!f)
		return -1;
	while (fgets(names, sizeof(names), f) &&
	       fgets(values, sizeof(values), f)) {
		if (strncmp(names, "TcpExt:", 7))
			continue;
		names[strcspn(names, "\n")] = '\0';
		values[strcspn(values, "\n")] = '\0';
		n = strtok_r(names, " ", &sn);
		v = strtok_r(values, " ", &sv);
		while (n && v) {
			if (!strcmp(n, name)) {
				ret = strtoll(v, NULL, 10);
				break;
			}
			n = strtok_r(NULL, " ", &sn);
			v = strtok_r(NULL, " ", &sv);
		}
		break;
	}
	fclose(f);
	return ret;
}

/* Every failure has one reason, and every park that ended one end. */
static void assert_counters_add_up(struct __test_metadata *_metadata)
{
	long long sum = 0;
	int i;

	for (i = 0; i < ARRAY_SIZE(fail_reasons); i++) {
		ASSERT_LE(0, mib(fail_reasons[i])) {
			TH_LOG("no counter %s", fail_reasons[i]);
		}
		sum += mib(fail_reasons[i]);
	}
	ASSERT_EQ(mib(FAILURE), sum);

	sum = 0;
	for (i = 0; i < ARRAY_SIZE(park_ends); i++) {
		ASSERT_LE(0, mib(park_ends[i])) {
			TH_LOG("no counter %s", park_ends[i]);
		}
		sum += mib(park_ends[i]);
	}
	ASSERT_EQ(mib(PARKED), sum);
}

static void setup_netns(struct __test_metadata *_metadata)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int fd;

	ASSERT_EQ(0, unshare(CLONE_NEWNET));

	fd = socket(AF_INET, SOCK_DGRAM, 0);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ioctl(fd, SIOCGIFFLAGS, &ifr));
	ifr.ifr_flags |= IFF_UP;
	ASSERT_EQ(0, ioctl(fd, SIOCSIFFLAGS, &ifr));
	close(fd);
}

/* The sysctl ABI: tcp_migrate_req takes 0 and 1 (upstream), and refuses
 * anything above 2 or not a number, keeping its value.
 */
static const char * const bad_migrate_req[] = {
	"3", "255", "256", "-1", "abc",
};

static void assert_refused(struct __test_metadata *_metadata,
			   const char *path, const char *val, long old)
{
	EXPECT_EQ(-EINVAL, sysctl_write(path, val)) {
		TH_LOG("writing \"%s\" to %s", val, path);
	}
	EXPECT_EQ(old, sysctl_read(path));
}

static void assert_taken(struct __test_metadata *_metadata,
			 const char *path, const char *val)
{
	ASSERT_EQ(0, sysctl_write(path, val)) {
		TH_LOG("writing \"%s\" to %s", val, path);
	}
	ASSERT_EQ(strtol(val, NULL, 10), sysctl_read(path));
}

TEST(sysctl_migrate_req)
{
	int i;

	setup_netns(_metadata);
	ASSERT_EQ(0, sysctl_read(MIGRATE_REQ));

	assert_taken(_metadata, MIGRATE_REQ, "1");
	for (i = 0; i < ARRAY_SIZE(bad_migrate_req); i++)
		assert_refused(_metadata, MIGRATE_REQ, bad_migrate_req[i], 1);

	assert_taken(_metadata, MIGRATE_REQ, "0");
	for (i = 0; i < ARRAY_SIZE(bad_migrate_req); i++)
		assert_refused(_metadata, MIGRATE_REQ, bad_migrate_req[i], 0);
}

/* tcp_migrate_req=2, the load-aware choice, and its neighbours. */
TEST(sysctl_migrate_req_2)
{
	int i;

	setup_netns(_metadata);
	if (!has_grace())
		SKIP(return, "no " GRACE);

	assert_taken(_metadata, MIGRATE_REQ, "2");
	for (i = 0; i < ARRAY_SIZE(bad_migrate_req); i++)
		assert_refused(_metadata, MIGRATE_REQ, bad_migrate_req[i], 2);
	assert_taken(_metadata, MIGRATE_REQ, "1");
	assert_taken(_metadata, MIGRATE_REQ, "2");
	assert_taken(_metadata, MIGRATE_REQ, "0");
}

/* The grace takes 0 to 60000 ms and nothing else; it defaults to 0. */
TEST(sysctl_grace)
{
	static const char * const good[] = { "1", "250", "60000", "0" };
	static const char * const bad[] = {
		"60001", "-1", "4294967296", "abc",
	};
	int i;

	setup_netns(_metadata);
	if (!has_grace())
		SKIP(return, "no " GRACE);

	ASSERT_EQ(0, sysctl_read(GRACE));
	for (i = 0; i < ARRAY_SIZE(good); i++)
		assert_taken(_metadata, GRACE, good[i]);

	assert_taken(_metadata, GRACE, "250");
	for (i = 0; i < ARRAY_SIZE(bad); i++)
		assert_refused(_metadata, GRACE, bad[i], 250);
}

/* What a test of the migrate fixture works on: one port of a reuseport
 * group, its listeners and its clients.
 */
struct test_port {
	int family;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	unsigned short port;
	int listener[NR_LISTENERS];
	int client[MAX_CLIENTS];
	unsigned short client_port[MAX_CLIENTS];
	int nr_clients;
	char trace[PATH_MAX];
};

FIXTURE(migrate)
{
	struct test_port p;
};

FIXTURE_VARIANT(migrate)
{
	int family;
};

FIXTURE_VARIANT_ADD(migrate, ipv4)
{
	.family = AF_INET,
};

FIXTURE_VARIANT_ADD(migrate, ipv6)
{
	.family = AF_INET6,
};

static void set_port(struct test_port *p, unsigned short port)
{
	p->port = port;
	if (p->family == AF_INET)
		((struct sockaddr_in *)&p->addr)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&p->addr)->sin6_port = htons(port);
}

FIXTURE_SETUP(migrate)
{
	struct test_port *p = &self->p;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&p->addr;
	struct sockaddr_in *in = (struct sockaddr_in *)&p->addr;
	int i;

	setup_netns(_metadata);

	p->family = variant->family;
	memset(&p->addr, 0, sizeof(p->addr));
	if (p->family == AF_INET) {
		in->sin_family = AF_INET;
		in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		p->addrlen = sizeof(*in);
	} else {
		in6->sin6_family = AF_INET6;
		in6->sin6_addr = in6addr_loopback;
		p->addrlen = sizeof(*in6);
	}
	set_port(p, 0);

	for (i = 0; i < NR_LISTENERS; i++)
		p->listener[i] = -1;
	for (i = 0; i < MAX_CLIENTS; i++)
		p->client[i] = -1;
	p->nr_clients = 0;
	p->trace[0] = '\0';
}

static void trace_stop(struct test_port *p);

FIXTURE_TEARDOWN(migrate)
{
	struct test_port *p = &self->p;
	int i;

	/* End every park of the namespace before it goes. */
	if (has_grace())
		sysctl_write(GRACE, "0");
	for (i = 0; i < NR_LISTENERS; i++)
		if (p->listener[i] >= 0)
			close(p->listener[i]);
	for (i = 0; i < p->nr_clients; i++)
		if (p->client[i] >= 0)
			close(p->client[i]);
	trace_stop(p);
}

/* A TCP socket of the test's family, bound to the test's port (the first
 * one binds an ephemeral port, which becomes the test's).
 */
static int bind_sock(struct __test_metadata *_metadata,
		     struct test_port *p, bool reuseport)
{
	struct sockaddr_storage addr;
	socklen_t len = sizeof(addr);
	int fd;

	fd = socket(p->family, SOCK_STREAM, 0);
	ASSERT_LE(0, fd);
	if (reuseport)
		ASSERT_EQ(0, setsockopt(fd, SOL_SOCKET, SO_REUSEPORT,
					&(int){1}, sizeof(int)));
	ASSERT_EQ(0, bind(fd, (struct sockaddr *)&p->addr, p->addrlen));
	if (!p->port) {
		ASSERT_EQ(0, getsockname(fd, (struct sockaddr *)&addr, &len));
		if (p->family == AF_INET)
			set_port(p,
				 ntohs(((struct sockaddr_in *)&addr)->sin_port));
		else
			set_port(p,
				 ntohs(((struct sockaddr_in6 *)&addr)->sin6_port));
	}
	return fd;
}

/* Listener @i is bound with SO_REUSEPORT; it listens later. */
static void bind_listener(struct __test_metadata *_metadata,
			  struct test_port *p, int i)
{
	p->listener[i] = bind_sock(_metadata, p, true);
}

static void do_listen(struct __test_metadata *_metadata,
		      struct test_port *p, int i, int backlog)
{
	ASSERT_EQ(0, listen(p->listener[i], backlog));
}

/* The final ACK of a handshake to listener @i is ignored until data comes
 * with it: each client that sends nothing stays a request in the
 * listener's SYN queue, and becomes a child when it sends its hello.
 */
static void defer_accept(struct __test_metadata *_metadata,
			 struct test_port *p, int i)
{
	ASSERT_EQ(0, setsockopt(p->listener[i], IPPROTO_TCP,
				TCP_DEFER_ACCEPT, &(int){30}, sizeof(int)));
}

enum stop {
	STOP_CLOSE,
	STOP_SHUTDOWN,
};

static void stop_listener(struct __test_metadata *_metadata,
			  struct test_port *p, int i, enum stop how)
{
	if (how == STOP_SHUTDOWN) {
		ASSERT_EQ(0, shutdown(p->listener[i], SHUT_RDWR));
		return;
	}
	ASSERT_EQ(0, close(p->listener[i]));
	p->listener[i] = -1;
}

/* Children in the accept queue of listener @fd (TCP_INFO of a listener). */
static int queued(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
		return -1;
	return ti.tcpi_unacked;
}

/* Waits until listener @i holds @n children, and returns what it holds. */
static int wait_queued(struct test_port *p, int i, int n)
{
	int fd = p->listener[i];

	wait_for(queued(fd) >= n, EVENT_TIMEOUT_MS);
	return queued(fd);
}

/* A client says hello with its index, and the server answers with it. */
static void send_hello(struct __test_metadata *_metadata,
		       struct test_port *p, int c)
{
	ASSERT_EQ(sizeof(c), send(p->client[c], &c, sizeof(c),
				  MSG_NOSIGNAL));
}

/* A new client connects to the test's port, and says hello if @hello. */
static int connect_client(struct __test_metadata *_metadata,
			  struct test_port *p, bool hello)
{
	struct sockaddr_storage addr;
	socklen_t len = sizeof(addr);
	int c = p->nr_clients;
	int fd;

	ASSERT_GT(MAX_CLIENTS, c);
	fd = socket(p->family, SOCK_STREAM, 0);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO,
				&(struct timeval){ .tv_sec = 5 },
				sizeof(struct timeval)));
	ASSERT_EQ(0, connect(fd, (struct sockaddr *)&p->addr,
			     p->addrlen)) {
		TH_LOG("client %d: connect: %s", c, strerror(errno));
	}
	ASSERT_EQ(0, getsockname(fd, (struct sockaddr *)&addr, &len));
	if (p->family == AF_INET)
		p->client_port[c] = ntohs(((struct sockaddr_in *)&addr)->sin_port);
	else
		p->client_port[c] = ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
	p->client[c] = fd;
	p->nr_clients++;
	if (hello)
		send_hello(_metadata, p, c);
	return c;
}

/* @n clients connect and say hello; listener @i must queue them all. */
static void children_on(struct __test_metadata *_metadata,
			struct test_port *p, int i, int n)
{
	int before = queued(p->listener[i]);
	int c;

	for (c = 0; c < n; c++)
		connect_client(_metadata, p, true);
	ASSERT_EQ(before + n, wait_queued(p, i, before + n));
}

/* Accepts @n connections from listener @i, reads each one's hello and
 * answers it; every client must then read its answer, each one once.
 */
static void serve(struct __test_metadata *_metadata,
		  struct test_port *p, int i, int n)
{
	struct pollfd pfd = { .fd = p->listener[i], .events = POLLIN };
	bool served[MAX_CLIENTS] = {};
	long long end = now_ms() + EVENT_TIMEOUT_MS;
	int k, fd, c, answer;

	for (k = 0; k < n; k++) {
		ASSERT_EQ(1, poll(&pfd, 1, end - now_ms() > 0 ?
					     end - now_ms() : 0)) {
			TH_LOG("listener %d: %d of %d accepted", i, k, n);
		}
		fd = accept(p->listener[i], NULL, NULL);
		ASSERT_LE(0, fd);
		ASSERT_EQ(0, setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO,
					&(struct timeval){ .tv_sec = 5 },
					sizeof(struct timeval)));
		ASSERT_EQ(sizeof(c), recv(fd, &c, sizeof(c), MSG_WAITALL));
		ASSERT_LE(0, c);
		ASSERT_GT(p->nr_clients, c);
		ASSERT_FALSE(served[c]);
		served[c] = true;
		ASSERT_EQ(sizeof(c), send(fd, &c, sizeof(c), MSG_NOSIGNAL));
		close(fd);
	}
	for (c = 0; c < p->nr_clients; c++) {
		if (!served[c])
			continue;
		ASSERT_EQ(sizeof(answer), recv(p->client[c], &answer,
					       sizeof(answer), MSG_WAITALL)) {
			TH_LOG("client %d: %s", c, strerror(errno));
		}
		ASSERT_EQ(c, answer);
	}
}

/* Clients @from to @to - 1 are all reset within the event timeout. */
static void assert_reset(struct __test_metadata *_metadata,
			 struct test_port *p, int from, int to)
{
	long long end = now_ms() + EVENT_TIMEOUT_MS;
	struct pollfd pfd = { .events = POLLIN };
	char buf[16];
	int c, ret;

	for (c = from; c < to; c++) {
		pfd.fd = p->client[c];
		poll(&pfd, 1, end - now_ms() > 0 ? end - now_ms() : 0);
		ret = recv(p->client[c], buf, sizeof(buf), MSG_DONTWAIT);
		ASSERT_EQ(-1, ret) {
			TH_LOG("client %d: recv %d, not reset", c, ret);
		}
		ASSERT_EQ(ECONNRESET, errno) {
			TH_LOG("client %d: %s, not reset", c, strerror(errno));
		}
	}
}

/* Binds the test's port as a socket of its own and closes it: 0 or
 * -errno. Without SO_REUSEPORT it succeeds only on a free port.
 */
static int try_bind(struct test_port *p, bool reuseport)
{
	int fd, ret = 0;

	fd = socket(p->family, SOCK_STREAM, 0);
	if (fd < 0)
		return -errno;
	if (reuseport &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &(int){1}, sizeof(int)))
		ret = -errno;
	if (!ret && bind(fd, (struct sockaddr *)&p->addr, p->addrlen))
		ret = -errno;
	close(fd);
	return ret;
}

/* tracefs, mounted at its usual place if it is not yet: NULL if the kernel
 * has none.
 */
static const char *tracefs(void)
{
	if (!access("/sys/kernel/tracing/instances", F_OK))
		return "/sys/kernel/tracing";
	if (!mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, NULL) &&
	    !access("/sys/kernel/tracing/instances", F_OK))
		return "/sys/kernel/tracing";
	if (!access("/sys/kernel/debug/tracing/instances", F_OK))
		return "/sys/kernel/debug/tracing";
	return NULL;
}

static const char * const trace_events[] = {
	"tcp_reuseport_migrate", "tcp_reuseport_park",
};

static int trace_write(struct test_port *p, const char *event,
		       const char *file, const char *val)
{
	char path[PATH_MAX + 64];

	snprintf(path, sizeof(path), "%s/events/tcp/%s/%s", p->trace,
		 event, file);
	return sysctl_write(path, val);
}

/* Traces both events for the test's port in a tracing instance of the
 * test's own. False if the kernel has no tracefs; once it has, the events
 * must be there.
 */
static bool trace_start(struct __test_metadata *_metadata,
			struct test_port *p)
{
	const char *root = tracefs();
	char filter[32];
	int i;

	if (!root)
		return false;
	snprintf(p->trace, sizeof(p->trace),
		 "%s/instances/reuseport_migrate.%d", root, getpid());
	ASSERT_EQ(0, mkdir(p->trace, 0700)) {
		TH_LOG("mkdir %s: %s", p->trace, strerror(errno));
		p->trace[0] = '\0';
	}
	snprintf(filter, sizeof(filter), "sport == %u", p->port);
	for (i = 0; i < ARRAY_SIZE(trace_events); i++) {
		ASSERT_EQ(0, trace_write(p, trace_events[i], "filter",
					 filter)) {
			TH_LOG("no tracepoint tcp:%s", trace_events[i]);
		}
		ASSERT_EQ(0, trace_write(p, trace_events[i], "enable", "1"));
	}
	return true;
}

static void trace_stop(struct test_port *p)
{
	int i;

	if (!p->trace[0])
		return;
	for (i = 0; i < ARRAY_SIZE(trace_events); i++)
		trace_write(p, trace_events[i], "enable", "0");
	rmdir(p->trace);
	p->trace[0] = '\0';
}

/* What the test's tracing instance holds, NUL-terminated, to free(). */
static char *trace_read(struct __test_metadata *_metadata,
			struct test_port *p)
{
	char path[PATH_MAX + 8];
	size_t size = 1 << 16, len = 0;
	char *buf = malloc(size);
	ssize_t ret;
	int fd;

	ASSERT_NE(NULL, buf);
	snprintf(path, sizeof(path), "%s/trace", p->trace);
	fd = open(path, O_RDONLY);
	ASSERT_LE(0, fd);
	for (;;) {
		if (len + 1 == size) {
			size *= 2;
			buf = realloc(buf, size);
			ASSERT_NE(NULL, buf);
		}
		ret = read(fd, buf + len, size - len - 1);
		ASSERT_LE(0, ret);
		if (!ret)
			break;
		len += ret;
	}
	close(fd);
	buf[len] = '\0';
	return buf;
}

/* Lines of @event ("tcp_reuseport_migrate") that contain @what. */
static int trace_count(const char *buf, const char *event, const char *what)
{
	char tag[64];
	const char *line, *eol;
	char one[1024];
	int n = 0;

	snprintf(tag, sizeof(tag), " %s: ", event);
	for (line = buf; *line; line = *eol ? eol + 1 : eol) {
		eol = strchrnul(line, '\n');
		if (*line == '#' || eol - line >= sizeof(one))
			continue;
		memcpy(one, line, eol - line);
		one[eol - line] = '\0';
		if (strstr(one, tag) && strstr(one, what))
			n++;
	}
	return n;
}

/* The park events, in order, as "parked queued=4 requests=2, ...". */
static void park_events(const char *buf, char *out, size_t size)
{
	const char *line, *eol, *ev, *sk;
	size_t len = 0;

	out[0] = '\0';
	for (line = buf; *line; line = *eol ? eol + 1 : eol) {
		eol = strchrnul(line, '\n');
		if (*line == '#')
			continue;
		ev = strstr(line, " tcp_reuseport_park: ");
		if (!ev || ev > eol)
			continue;
		ev = strstr(ev, " event=");
		sk = ev ? strstr(ev, " sk=") : NULL;
		if (!sk || sk > eol)
			continue;
		ev += strlen(" event=");
		len += snprintf(out + len, size - len, "%s%.*s",
				len ? ", " : "", (int)(sk - ev), ev);
		if (len >= size)
			return;
	}
}

/* The park events of the test's port must read @want. */
static void assert_park_events(struct __test_metadata *_metadata,
			       struct test_port *p, const char *want)
{
	char got[1024];
	char *buf;

	if (!p->trace[0]) {
		TH_LOG("no tracefs: park events not checked");
		return;
	}
	buf = trace_read(_metadata, p);
	park_events(buf, got, sizeof(got));
	free(buf);
	ASSERT_STREQ(want, got);
}

/*
 * Children queued on a listener move when it is closed or shut down:
 * L0 queues 3, L1 listens, L0 stops and L1 must hold all 3. L1 queues 4
 * more, L2 and L3 listen, L1 stops and L2 and L3 must hold all 7 between
 * them, which they serve.
 */
static void migrate_children(struct __test_metadata *_metadata,
			     struct test_port *p, enum stop how)
{
	int i;

	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "1"));
	for (i = 0; i < NR_LISTENERS; i++)
		bind_listener(_metadata, p, i);

	do_listen(_metadata, p, 0, 32);
	children_on(_metadata, p, 0, 3);
	do_listen(_metadata, p, 1, 32);
	stop_listener(_metadata, p, 0, how);
	ASSERT_EQ(3, queued(p->listener[1]));
	ASSERT_EQ(3, mib(SUCCESS));
	ASSERT_EQ(0, mib(FAILURE));

	children_on(_metadata, p, 1, 4);
	do_listen(_metadata, p, 2, 32);
	do_listen(_metadata, p, 3, 32);
	stop_listener(_metadata, p, 1, how);
	ASSERT_EQ(7, queued(p->listener[2]) + queued(p->listener[3]));
	ASSERT_EQ(10, mib(SUCCESS));
	ASSERT_EQ(0, mib(FAILURE));

	serve(_metadata, p, 2, queued(p->listener[2]));
	serve(_metadata, p, 3, queued(p->listener[3]));
}

TEST_F(migrate, close_children)
{
	struct test_port *p = &self->p;

	migrate_children(_metadata, p, STOP_CLOSE);
}

TEST_F(migrate, shutdown_children)
{
	struct test_port *p = &self->p;

	migrate_children(_metadata, p, STOP_SHUTDOWN);
}

/*
 * Handshakes in flight when their listener stops move when their final
 * ACK (here with data) or their SYN+ACK timer comes: 4 requests on L0,
 * L1 listens, L0 stops, the clients say hello and L1 serves all 4.
 */
static void migrate_requests(struct __test_metadata *_metadata,
			     struct test_port *p, enum stop how)
{
	int c;

	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "1"));
	bind_listener(_metadata, p, 0);
	bind_listener(_metadata, p, 1);
	defer_accept(_metadata, p, 0);
	do_listen(_metadata, p, 0, 32);
	for (c = 0; c < 4; c++)
		connect_client(_metadata, p, false);
	ASSERT_EQ(0, queued(p->listener[0]));

	do_listen(_metadata, p, 1, 32);
	stop_listener(_metadata, p, 0, how);
	for (c = 0; c < 4; c++)
		send_hello(_metadata, p, c);
	ASSERT_EQ(4, wait_queued(p, 1, 4));
	ASSERT_EQ(4, mib(SUCCESS));
	ASSERT_EQ(0, mib(FAILURE));
	serve(_metadata, p, 1, 4);
}

TEST_F(migrate, close_requests)
{
	struct test_port *p = &self->p;

	migrate_requests(_metadata, p, STOP_CLOSE);
}

TEST_F(migrate, shutdown_requests)
{
	struct test_port *p = &self->p;

	migrate_requests(_metadata, p, STOP_SHUTDOWN);
}

/* tcp_migrate_req=0: a closing listener's children are reset, and no
 * migration is attempted or counted.
 */
TEST_F(migrate, disabled)
{
	struct test_port *p = &self->p;

	bind_listener(_metadata, p, 0);
	bind_listener(_metadata, p, 1);
	do_listen(_metadata, p, 0, 32);
	children_on(_metadata, p, 0, 3);
	do_listen(_metadata, p, 1, 32);
	stop_listener(_metadata, p, 0, STOP_CLOSE);
	assert_reset(_metadata, p, 0, 3);
	ASSERT_EQ(0, queued(p->listener[1]));
	ASSERT_EQ(0, mib(SUCCESS));
	ASSERT_EQ(0, mib(FAILURE));
}

/* The last listener closes with migration on and no grace: its 3 children
 * and 2 requests find no listener, each counted once as such, and are
 * reset.
 */
TEST_F(migrate, no_listener)
{
	struct test_port *p = &self->p;
	int c;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "1"));
	bind_listener(_metadata, p, 0);
	defer_accept(_metadata, p, 0);
	do_listen(_metadata, p, 0, 32);
	children_on(_metadata, p, 0, 3);
	for (c = 0; c < 2; c++)
		connect_client(_metadata, p, false);

	stop_listener(_metadata, p, 0, STOP_CLOSE);
	assert_reset(_metadata, p, 0, 3);
	for (c = 3; c < 5; c++)
		send_hello(_metadata, p, c);
	assert_reset(_metadata, p, 3, 5);
	ASSERT_TRUE(wait_for(mib(FAILURE) == 5, EVENT_TIMEOUT_MS));
	ASSERT_EQ(5, mib(NO_LISTENER));
	ASSERT_EQ(0, mib(SUCCESS));
	ASSERT_EQ(0, mib(PARKED));
	assert_counters_add_up(_metadata);
}

/*
 * tcp:tcp_reuseport_migrate, read from tracefs: L0 holds 2 children and 2
 * requests and closes, L1 takes them (kind=child and kind=request, ok);
 * then L1, the last listener, closes with 4 children, which find no
 * listener. One event per attempt, for the clients' ports.
 */
TEST_F(migrate, trace_migrate)
{
	struct test_port *p = &self->p;
	char what[64];
	char *buf;
	int c;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "1"));
	bind_listener(_metadata, p, 0);
	bind_listener(_metadata, p, 1);
	if (!trace_start(_metadata, p))
		SKIP(return, "no tracefs");
	defer_accept(_metadata, p, 0);
	do_listen(_metadata, p, 0, 32);
	children_on(_metadata, p, 0, 2);
	for (c = 2; c < 4; c++)
		connect_client(_metadata, p, false);

	do_listen(_metadata, p, 1, 32);
	stop_listener(_metadata, p, 0, STOP_CLOSE);
	for (c = 2; c < 4; c++)
		send_hello(_metadata, p, c);
	ASSERT_EQ(4, wait_queued(p, 1, 4));
	stop_listener(_metadata, p, 1, STOP_CLOSE);
	assert_reset(_metadata, p, 0, 4);
	ASSERT_EQ(4, mib(SUCCESS));
	ASSERT_EQ(4, mib(FAILURE));
	ASSERT_EQ(4, mib(NO_LISTENER));
	assert_counters_add_up(_metadata);

	buf = trace_read(_metadata, p);
	EXPECT_EQ(8, trace_count(buf, "tcp_reuseport_migrate", ""));
	EXPECT_EQ(2, trace_count(buf, "tcp_reuseport_migrate",
				 "kind=child result=ok "));
	EXPECT_EQ(2, trace_count(buf, "tcp_reuseport_migrate",
				 "kind=request result=ok "));
	EXPECT_EQ(4, trace_count(buf, "tcp_reuseport_migrate",
				 "kind=child result=no_listener "));
	for (c = 0; c < 4; c++) {
		snprintf(what, sizeof(what), "sport=%u dport=%u ",
			 p->port, p->client_port[c]);
		EXPECT_EQ(2, trace_count(buf, "tcp_reuseport_migrate", what)) {
			TH_LOG("client %d (port %u)", c, p->client_port[c]);
		}
	}
	EXPECT_EQ(0, trace_count(buf, "tcp_reuseport_park", ""));
	free(buf);
}

/*
 * tcp_migrate_req=2 with a stalled listener: A, B and C share a port; B
 * never accepts and its queue is full (backlog 2, so 3 children), C has
 * room. A classic BPF program steers the SYNs, first to B, then to A, and
 * is detached before A closes, so that the sysctl alone chooses.
 */
#define LA	0
#define LB	1
#define LC	2
#define B_BACKLOG	2
#define B_FULL		(B_BACKLOG + 1)
#define K		16

static void steer(struct __test_metadata *_metadata,
		  struct test_port *p, int i)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_RET | BPF_K, i),
	};
	struct sock_fprog prog = {
		.len = ARRAY_SIZE(code),
		.filter = code,
	};

	ASSERT_EQ(0, setsockopt(p->listener[LA], SOL_SOCKET,
				SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)));
}

static void stalled_setup(struct __test_metadata *_metadata,
			  struct test_port *p)
{
	int i;

	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "2"));
	for (i = LA; i <= LC; i++)
		bind_listener(_metadata, p, i);
	/* listen() order is the index in the group: A 0, B 1, C 2 */
	do_listen(_metadata, p, LA, 32);
	do_listen(_metadata, p, LB, B_BACKLOG);
	do_listen(_metadata, p, LC, 32);
	steer(_metadata, p, LB);
	children_on(_metadata, p, LB, B_FULL);
	steer(_metadata, p, LA);
}

TEST_F(migrate, stalled_listener_children)
{
	struct test_port *p = &self->p;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	stalled_setup(_metadata, p);
	children_on(_metadata, p, LA, K);
	ASSERT_EQ(0, setsockopt(p->listener[LA], SOL_SOCKET,
				SO_DETACH_REUSEPORT_BPF, &(int){0}, sizeof(int)));

	stop_listener(_metadata, p, LA, STOP_CLOSE);
	ASSERT_EQ(B_FULL, queued(p->listener[LB]));
	ASSERT_EQ(K, queued(p->listener[LC]));
	ASSERT_EQ(K, mib(SUCCESS));
	ASSERT_EQ(0, mib(FAILURE));
	ASSERT_EQ(0, mib("ListenOverflows"));
	serve(_metadata, p, LC, K);
	assert_counters_add_up(_metadata);
}

TEST_F(migrate, stalled_listener_requests)
{
	struct test_port *p = &self->p;
	int c;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	stalled_setup(_metadata, p);
	defer_accept(_metadata, p, LA);
	for (c = 0; c < K; c++)
		connect_client(_metadata, p, false);
	ASSERT_EQ(0, queued(p->listener[LA]));
	ASSERT_EQ(0, setsockopt(p->listener[LA], SOL_SOCKET,
				SO_DETACH_REUSEPORT_BPF, &(int){0}, sizeof(int)));

	stop_listener(_metadata, p, LA, STOP_CLOSE);
	for (c = B_FULL; c < B_FULL + K; c++)
		send_hello(_metadata, p, c);
	ASSERT_EQ(K, wait_queued(p, LC, K));
	ASSERT_EQ(B_FULL, queued(p->listener[LB]));
	ASSERT_EQ(K, mib(SUCCESS));
	ASSERT_EQ(0, mib(FAILURE));
	ASSERT_EQ(0, mib("ListenOverflows"));
	serve(_metadata, p, LC, K);
	assert_counters_add_up(_metadata);
}

static void set_grace(struct __test_metadata *_metadata, int ms)
{
	char val[16];

	snprintf(val, sizeof(val), "%d", ms);
	ASSERT_EQ(0, sysctl_write(GRACE, val));
}

/*
 * Parking. L0, the only listener, holds QUEUED children and IN_FLIGHT
 * requests (clients 0 to QUEUED + IN_FLIGHT - 1) and closes with a grace
 * of @grace_ms: it must be parked, holding them all.
 */
static void park_one(struct __test_metadata *_metadata,
		     struct test_port *p, int grace_ms, int in_flight)
{
	int c;

	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "1"));
	set_grace(_metadata, grace_ms);
	bind_listener(_metadata, p, 0);
	trace_start(_metadata, p);
	defer_accept(_metadata, p, 0);
	do_listen(_metadata, p, 0, 32);
	children_on(_metadata, p, 0, QUEUED);
	for (c = 0; c < in_flight; c++)
		connect_client(_metadata, p, false);
	ASSERT_EQ(QUEUED, queued(p->listener[0]));

	stop_listener(_metadata, p, 0, STOP_CLOSE);
	ASSERT_EQ(1, mib(PARKED));
}

/* Parks and their ends since the namespace was made, as the test expects. */
static void assert_parks(struct __test_metadata *_metadata, int parked,
			 int adopted, int expired, int evicted, int cancelled,
			 int destroyed)
{
	EXPECT_EQ(parked, mib(PARKED));
	EXPECT_EQ(adopted, mib(ADOPTED));
	EXPECT_EQ(expired, mib(EXPIRED));
	EXPECT_EQ(evicted, mib(EVICTED));
	EXPECT_EQ(cancelled, mib(CANCELLED));
	EXPECT_EQ(destroyed, mib(DESTROYED));
}

/*
 * Stop, then start @gap_ms later, well within the grace: the clients that
 * connect in the gap are answered by the parked listener, and the new
 * listener adopts every connection, each migrated once, and serves it.
 */
static void stop_start(struct __test_metadata *_metadata,
		       struct test_port *p, int gap_ms)
{
	const int all = QUEUED + IN_FLIGHT + IN_GAP;
	char want[128], got[512];
	int c, held, queue, reqs, ret;
	long long closed_at;
	char *buf;

	park_one(_metadata, p, GRACE_MS, IN_FLIGHT);
	closed_at = now_ms();
	for (c = 0; c < IN_GAP; c++)
		connect_client(_metadata, p, true);
	if (closed_at + gap_ms > now_ms())
		usleep((closed_at + gap_ms - now_ms()) * 1000);

	bind_listener(_metadata, p, 1);
	do_listen(_metadata, p, 1, 32);
	TH_LOG("new listener %lld ms after the close", now_ms() - closed_at);
	for (c = QUEUED; c < QUEUED + IN_FLIGHT; c++)
		send_hello(_metadata, p, c);
	serve(_metadata, p, 1, all);

	ASSERT_TRUE(wait_for(mib(ADOPTED) == 1, EVENT_TIMEOUT_MS));
	assert_parks(_metadata, 1, 1, 0, 0, 0, 0);
	ASSERT_EQ(all, mib(SUCCESS));
	ASSERT_EQ(0, mib(FAILURE));
	assert_counters_add_up(_metadata);

	if (!p->trace[0])
		return;
	/* The adoption reads the queues without their locks while
	 * handshakes complete: a connection may be in neither for an
	 * instant.
	 */
	buf = trace_read(_metadata, p);
	park_events(buf, got, sizeof(got));
	free(buf);
	snprintf(want, sizeof(want), "parked queued=%d requests=%d, adopted ",
		 QUEUED, IN_FLIGHT);
	ASSERT_EQ(0, strncmp(want, got, strlen(want))) {
		TH_LOG("park events: %s", got);
	}
	ret = sscanf(got + strlen(want), "queued=%d requests=%d", &queue,
		     &reqs);
	ASSERT_EQ(2, ret) {
		TH_LOG("park events: %s", got);
	}
	held = queue + reqs;
	EXPECT_LE(all - 1, held);
	EXPECT_GE(all, held);
}

TEST_F_TIMEOUT(migrate, park_gap_0ms, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	stop_start(_metadata, p, 0);
}

TEST_F_TIMEOUT(migrate, park_gap_50ms, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	stop_start(_metadata, p, 50);
}

TEST_F_TIMEOUT(migrate, park_gap_500ms, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	stop_start(_metadata, p, 500);
}

/* No listener comes within the grace: the park expires and every
 * connection it held is reset; the port is free again.
 */
TEST_F_TIMEOUT(migrate, park_expired, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;
	const int all = QUEUED + IN_FLIGHT + IN_GAP;
	char want[128];
	int c;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	park_one(_metadata, p, GRACE_MS, IN_FLIGHT);
	for (c = QUEUED; c < QUEUED + IN_FLIGHT; c++)
		send_hello(_metadata, p, c);
	for (c = 0; c < IN_GAP; c++)
		connect_client(_metadata, p, true);

	ASSERT_TRUE(wait_for(mib(EXPIRED) == 1, GRACE_MS + EVENT_TIMEOUT_MS));
	assert_reset(_metadata, p, 0, all);
	assert_parks(_metadata, 1, 0, 1, 0, 0, 0);
	ASSERT_EQ(0, mib(SUCCESS));
	ASSERT_EQ(all, mib(FAILURE));
	ASSERT_EQ(all, mib(NO_LISTENER));
	assert_counters_add_up(_metadata);
	ASSERT_EQ(0, try_bind(p, false));

	snprintf(want, sizeof(want),
		 "parked queued=%d requests=%d, expired queued=%d requests=0",
		 QUEUED, IN_FLIGHT, all);
	assert_park_events(_metadata, p, want);
}

/* A stranger takes the parked port: a socket of another uid with
 * SO_REUSEPORT, or one without it. Its bind() succeeds, as it would have
 * after a plain close(), and evicts the park: the children are reset.
 */
static void park_evicted(struct __test_metadata *_metadata,
			 struct test_port *p, uid_t uid,
			 bool reuseport)
{
	char want[128];
	int status;
	pid_t pid;

	park_one(_metadata, p, 2 * GRACE_MS, 0);

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		if (uid && setresuid(uid, uid, uid))
			_exit(100);
		_exit(-try_bind(p, reuseport));
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status)) {
		TH_LOG("the stranger's bind: %s",
		       WEXITSTATUS(status) == 100 ? "setresuid failed" :
		       strerror(WEXITSTATUS(status)));
	}

	ASSERT_TRUE(wait_for(mib(EVICTED) == 1, EVENT_TIMEOUT_MS));
	assert_reset(_metadata, p, 0, QUEUED);
	ASSERT_EQ(0, try_bind(p, false));
	assert_parks(_metadata, 1, 0, 0, 1, 0, 0);
	ASSERT_EQ(0, mib(SUCCESS));
	ASSERT_EQ(QUEUED, mib(FAILURE));
	ASSERT_EQ(QUEUED, mib(NO_LISTENER));
	assert_counters_add_up(_metadata);

	snprintf(want, sizeof(want),
		 "parked queued=%d requests=0, evicted queued=%d requests=0",
		 QUEUED, QUEUED);
	assert_park_events(_metadata, p, want);
}

TEST_F_TIMEOUT(migrate, park_evicted_other_uid, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	park_evicted(_metadata, p, 65534, true);
}

TEST_F_TIMEOUT(migrate, park_evicted_no_reuseport, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	park_evicted(_metadata, p, 0, false);
}

/* The grace set to 0 cancels the park at once: the children are reset. */
TEST_F_TIMEOUT(migrate, park_cancelled, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;
	char want[128];

	if (!has_grace())
		SKIP(return, "no " GRACE);
	park_one(_metadata, p, 2 * GRACE_MS, 0);
	ASSERT_EQ(0, sysctl_write(GRACE, "0"));
	ASSERT_TRUE(wait_for(mib(CANCELLED) == 1, EVENT_TIMEOUT_MS));
	assert_reset(_metadata, p, 0, QUEUED);
	assert_parks(_metadata, 1, 0, 0, 0, 1, 0);
	ASSERT_EQ(QUEUED, mib(NO_LISTENER));
	assert_counters_add_up(_metadata);
	ASSERT_EQ(0, try_bind(p, false));

	snprintf(want, sizeof(want),
		 "parked queued=%d requests=0, cancelled queued=%d requests=0",
		 QUEUED, QUEUED);
	assert_park_events(_metadata, p, want);
}

/* SOCK_DESTROY of the listener of @p's port with socket cookie @cookie,
 * as ss -K sends it: 0 or -errno.
 */
static int sock_destroy(struct test_port *p,
			unsigned long long cookie)
{
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 req;
	} msg = {
		.nlh = {
			.nlmsg_len = sizeof(msg),
			.nlmsg_type = SOCK_DESTROY,
			.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK,
			.nlmsg_seq = 1,
		},
		.req = {
			.sdiag_family = p->family,
			.sdiag_protocol = IPPROTO_TCP,
			.idiag_states = 1 << TCP_LISTEN,
			.id = {
				.idiag_sport = htons(p->port),
				.idiag_cookie = { (__u32)cookie,
						  (__u32)(cookie >> 32) },
			},
		},
	};
	char buf[512];
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	ssize_t len;
	int fd, ret;

	if (p->family == AF_INET)
		memcpy(msg.req.id.idiag_src,
		       &((struct sockaddr_in *)&p->addr)->sin_addr, 4);
	else
		memcpy(msg.req.id.idiag_src,
		       &((struct sockaddr_in6 *)&p->addr)->sin6_addr, 16);

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		return -errno;
	if (send(fd, &msg, sizeof(msg), 0) != sizeof(msg)) {
		ret = -errno;
		goto out;
	}
	len = recv(fd, buf, sizeof(buf), 0);
	if (len < 0) {
		ret = -errno;
		goto out;
	}
	ret = -EPROTO;
	if (NLMSG_OK(nlh, len) && nlh->nlmsg_type == NLMSG_ERROR)
		ret = ((struct nlmsgerr *)NLMSG_DATA(nlh))->error;
out:
	close(fd);
	return ret;
}

/* SOCK_DESTROY (ss -K) of the parked listener ends the park as destroyed:
 * its children are reset, the port is free, and nothing else ends it
 * when its grace would have run out.
 */
TEST_F_TIMEOUT(migrate, park_destroyed, PARK_TIMEOUT)
{
	struct test_port *p = &self->p;
	unsigned long long cookie;
	socklen_t len = sizeof(cookie);
	long long closed_at;
	char want[128];
	int ret;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "1"));
	set_grace(_metadata, GRACE_MS);
	bind_listener(_metadata, p, 0);
	trace_start(_metadata, p);
	do_listen(_metadata, p, 0, 32);
	ASSERT_EQ(0, getsockopt(p->listener[0], SOL_SOCKET, SO_COOKIE,
				&cookie, &len));
	children_on(_metadata, p, 0, QUEUED);
	stop_listener(_metadata, p, 0, STOP_CLOSE);
	closed_at = now_ms();
	ASSERT_EQ(1, mib(PARKED));

	ret = sock_destroy(p, cookie);
	if (ret == -EOPNOTSUPP)
		SKIP(return, "no SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)");
	ASSERT_EQ(0, ret) {
		TH_LOG("SOCK_DESTROY: %s", strerror(-ret));
	}
	ASSERT_TRUE(wait_for(mib(DESTROYED) == 1, EVENT_TIMEOUT_MS));
	assert_reset(_metadata, p, 0, QUEUED);
	ASSERT_EQ(0, try_bind(p, false));

	if (closed_at + GRACE_MS + 500 > now_ms())
		usleep((closed_at + GRACE_MS + 500 - now_ms()) * 1000);
	assert_parks(_metadata, 1, 0, 0, 0, 0, 1);
	ASSERT_EQ(QUEUED, mib(FAILURE));
	ASSERT_EQ(QUEUED, mib(NO_LISTENER));
	assert_counters_add_up(_metadata);

	snprintf(want, sizeof(want),
		 "parked queued=%d requests=0, destroyed queued=%d requests=0",
		 QUEUED, QUEUED);
	assert_park_events(_metadata, p, want);
}

/* shutdown() of the last listener never parks: its socket stays with its
 * process. Its children find no listener and are reset.
 */
TEST_F(migrate, shutdown_no_park)
{
	struct test_port *p = &self->p;

	if (!has_grace())
		SKIP(return, "no " GRACE);
	ASSERT_EQ(0, sysctl_write(MIGRATE_REQ, "1"));
	set_grace(_metadata, 2 * GRACE_MS);
	bind_listener(_metadata, p, 0);
	do_listen(_metadata, p, 0, 32);
	children_on(_metadata, p, 0, QUEUED);
	stop_listener(_metadata, p, 0, STOP_SHUTDOWN);
	assert_reset(_metadata, p, 0, QUEUED);
	assert_parks(_metadata, 0, 0, 0, 0, 0, 0);
	ASSERT_EQ(QUEUED, mib(FAILURE));
	ASSERT_EQ(QUEUED, mib(NO_LISTENER));
	assert_counters_add_up(_metadata);
}

TEST_HARNESS_MAIN
