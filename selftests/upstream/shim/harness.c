// SPDX-License-Identifier: GPL-2.0
/*
 * Standalone runner for one upstream BPF selftest (prog_tests/<test>.c),
 * replacing test_progs for this project. See ../README.md.
 *
 * It prepares what the test expects from its environment, calls the test's
 * entry function and prints one TAP line per subtest on stdout:
 *
 *   ok <prefix><subtest>
 *   not ok <prefix><subtest> - <first failed check>
 *
 * then a "1..N" plan. Diagnostics go to stderr, prefixed with "# ".
 * Exit status: 0 iff at least one subtest ran and nothing failed.
 *
 * Build-time knobs (the build script sets them):
 *   RM_SHIM_ENTRY   the test's entry function
 *   RM_SHIM_TEST    the test's name, used for failures outside subtests
 *   RM_SHIM_PREFIX  prefix of every TAP name
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <limits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/utsname.h>

#include "test_progs.h"

#ifndef RM_SHIM_ENTRY
#define RM_SHIM_ENTRY serial_test_migrate_reuseport
#endif
#ifndef RM_SHIM_TEST
#define RM_SHIM_TEST "migrate_reuseport"
#endif
#ifndef RM_SHIM_PREFIX
#define RM_SHIM_PREFIX "upstream/"
#endif

/* The tests attach XDP to the loopback device by this index. */
#define LO_IFINDEX 1
#define DEFAULT_TIMEOUT_S 300

void RM_SHIM_ENTRY(void);

static struct {
	char subtest[256];	/* running subtest; "" before the first */
	bool in_subtest;
	bool sub_failed;
	char sub_reason[512];	/* its first failed check */
	bool top_failed;	/* a check failed outside any subtest */
	char top_reason[512];
	int n_run;
	int n_failed;
	bool verbose;
	unsigned int timeout_s;
} st;

static void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void diag(const char *fmt, ...)
{
	va_list ap;

	fputs("# ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

const char *rm_shim_errno_note(long long value, int saved_errno)
{
	static char buf[128];

	if (value != -1 || !saved_errno)
		return "";
	snprintf(buf, sizeof(buf), " (errno %d: %s)", saved_errno,
		 strerror(saved_errno));
	return buf;
}

bool rm_shim_check(bool ok, const char *file, int line, const char *tag,
		   const char *fmt, ...)
{
	const char *base = strrchr(file, '/');
	char msg[400];
	va_list ap;

	if (ok)
		return true;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	base = base ? base + 1 : file;

	diag("FAIL %s: %s: %s (%s:%d)",
	     st.in_subtest ? st.subtest : RM_SHIM_TEST, tag, msg, base, line);

	if (st.in_subtest) {
		if (!st.sub_failed)
			snprintf(st.sub_reason, sizeof(st.sub_reason),
				 "%s: %s (%s:%d)", tag, msg, base, line);
		st.sub_failed = true;
	} else {
		if (!st.top_failed)
			snprintf(st.top_reason, sizeof(st.top_reason),
				 "%s: %s (%s:%d)", tag, msg, base, line);
		st.top_failed = true;
	}
	return false;
}

static void end_subtest(void)
{
	if (!st.in_subtest)
		return;
	st.n_run++;
	if (st.sub_failed) {
		st.n_failed++;
		printf("not ok %s%s - %s\n", RM_SHIM_PREFIX, st.subtest,
		       st.sub_reason);
	} else {
		printf("ok %s%s\n", RM_SHIM_PREFIX, st.subtest);
	}
	fflush(stdout);
	st.in_subtest = false;
}

bool test__start_subtest(const char *name)
{
	end_subtest();
	snprintf(st.subtest, sizeof(st.subtest), "%s", name);
	st.in_subtest = true;
	st.sub_failed = false;
	st.sub_reason[0] = '\0';
	if (st.verbose)
		diag("subtest: %s", name);
	alarm(st.timeout_s);	/* watchdog, re-armed per subtest */
	return true;
}

/* Async-signal-safe: the TAP line for a subtest killed by a signal. */
static void put(const char *s)
{
	ssize_t r = write(STDOUT_FILENO, s, strlen(s));

	(void)r;
}

static void on_fatal_signal(int sig)
{
	put("not ok " RM_SHIM_PREFIX);
	put(st.in_subtest ? st.subtest : RM_SHIM_TEST);
	if (sig == SIGALRM)
		put(" - timed out (watchdog; raise it with -t SECONDS)\n");
	else {
		put(" - killed by signal ");
		put(sigabbrev_np(sig) ? sigabbrev_np(sig) : "?");
		put("\n");
	}
	_exit(1);
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt,
			va_list ap)
{
	if (level == LIBBPF_DEBUG && !st.verbose)
		return 0;
	fputs("# ", stderr);	/* libbpf adds its own "libbpf: " */
	return vfprintf(stderr, fmt, ap);
}

/* Bring lo up in the current namespace: 0, or -1 with errno set. */
static int lo_up(void)
{
	struct ifreq ifr;
	int fd, err = 0, saved;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, "lo", sizeof(ifr.ifr_name) - 1);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) ||
	    (!(ifr.ifr_flags & IFF_UP) &&
	     (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr))))
		err = -1;
	saved = errno;
	close(fd);
	errno = saved;
	return err;
}

/*
 * test_progs's netns_new() makes a named namespace with ip(8), with lo up,
 * and enters it when asked; netns_free() goes back and deletes it. Ours
 * makes an anonymous one (unshare), which goes when nothing holds it.
 */
struct netns_obj {
	int orig;	/* the namespace to go back to */
};

struct netns_obj *netns_new(const char *name, bool enter)
{
	struct netns_obj *ns;
	int saved;

	(void)name;
	if (!enter) {
		errno = EOPNOTSUPP;	/* no test of ours needs it */
		return NULL;
	}
	ns = calloc(1, sizeof(*ns));
	if (!ns)
		return NULL;
	ns->orig = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (ns->orig < 0)
		goto fail;
	if (unshare(CLONE_NEWNET))
		goto fail;
	if (lo_up()) {
		saved = errno;
		if (setns(ns->orig, CLONE_NEWNET))
			diag("netns_new: cannot go back to the first namespace: %s",
			     strerror(errno));
		errno = saved;
		goto fail;
	}
	return ns;
fail:
	saved = errno;
	if (ns->orig >= 0)
		close(ns->orig);
	free(ns);
	errno = saved;
	return NULL;
}

void netns_free(struct netns_obj *ns)
{
	if (!ns)
		return;
	if (setns(ns->orig, CLONE_NEWNET))
		rm_shim_check(false, __FILE__, __LINE__, "netns_free", "setns back: %s",
			      strerror(errno));
	close(ns->orig);
	free(ns);
}

/* As test_progs's: 0, or -1 with a failed check naming the step. */
int write_sysctl(const char *sysctl, const char *value)
{
	ssize_t len = strlen(value), n;
	int fd;

	fd = open(sysctl, O_WRONLY | O_CLOEXEC);
	if (!ASSERT_GE(fd, 0, "open sysctl"))
		return -1;
	n = write(fd, value, len);
	close(fd);
	return ASSERT_EQ(n, len, "write sysctl") ? 0 : -1;
}

/*
 * test_progs runs this serial test in the netns it was started in, i.e. the
 * root netns of a CI VM where loopback is up. We give the test a fresh
 * network namespace instead: loopback is ifindex 1 and all sysctls are at
 * their defaults, and neither the XDP program the test attaches to "lo" nor
 * its net.ipv4.tcp_fastopen change can leak outside this process.
 */
static int setup_net(bool new_netns)
{
	unsigned int idx;

	if (new_netns && unshare(CLONE_NEWNET)) {
		snprintf(st.top_reason, sizeof(st.top_reason),
			 "setup: unshare(CLONE_NEWNET): %s (needs root and CONFIG_NET_NS=y; or use --no-netns)",
			 strerror(errno));
		return -1;
	}

	if (lo_up()) {
		snprintf(st.top_reason, sizeof(st.top_reason),
			 "setup: bringing lo up: %s (needs CONFIG_INET=y)", strerror(errno));
		return -1;
	}

	idx = if_nametoindex("lo");
	if (idx != LO_IFINDEX) {
		snprintf(st.top_reason, sizeof(st.top_reason),
			 "setup: lo has ifindex %u, the test hard-codes %d",
			 idx, LO_IFINDEX);
		return -1;
	}
	return 0;
}

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
		"usage: %s [-v] [-t SECONDS] [--no-netns]\n"
		"Runs upstream BPF selftest '%s' standalone, printing TAP lines.\n"
		"  -v, --verbose   libbpf debug output and subtest progress on stderr\n"
		"  -t SECONDS      per-subtest watchdog (default %d, 0 = off)\n"
		"  --no-netns      run in the current network namespace (it changes\n"
		"                  XDP on lo and net.ipv4.tcp_fastopen there while it runs)\n",
		prog, RM_SHIM_TEST, DEFAULT_TIMEOUT_S);
}

int main(int argc, char **argv)
{
	static const int fatal[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGALRM };
	bool new_netns = true;
	struct utsname un;
	char *end;
	int i;

	st.timeout_s = DEFAULT_TIMEOUT_S;
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) {
			st.verbose = true;
		} else if (!strcmp(argv[i], "--no-netns")) {
			new_netns = false;
		} else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
			unsigned long t = strtoul(argv[++i], &end, 10);

			if (*end || end == argv[i] || t > UINT_MAX) {
				usage(stderr, argv[0]);
				return 2;
			}
			st.timeout_s = t;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout, argv[0]);
			return 0;
		} else {
			usage(stderr, argv[0]);
			return 2;
		}
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	setvbuf(stderr, NULL, _IOLBF, 0);
	for (i = 0; i < (int)ARRAY_SIZE(fatal); i++)
		signal(fatal[i], on_fatal_signal);
	/* A write to a reset connection must fail a check, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	libbpf_set_print(libbpf_print);

	if (uname(&un) == 0)
		diag("%s (standalone), kernel %s, %s netns", RM_SHIM_TEST,
		     un.release, new_netns ? "private" : "current");

	if (setup_net(new_netns)) {
		printf("not ok %s%s - %s\n", RM_SHIM_PREFIX, RM_SHIM_TEST,
		       st.top_reason);
		return 1;
	}

	alarm(st.timeout_s);
	RM_SHIM_ENTRY();
	alarm(0);
	end_subtest();

	if (st.top_failed)
		printf("not ok %s%s - %s\n", RM_SHIM_PREFIX, RM_SHIM_TEST,
		       st.top_reason);
	else if (!st.n_run)
		printf("not ok %s%s - no subtest ran\n", RM_SHIM_PREFIX,
		       RM_SHIM_TEST);
	printf("1..%d\n", st.n_run + (st.top_failed || !st.n_run));
	diag("%d subtest(s): %d passed, %d failed%s", st.n_run,
	     st.n_run - st.n_failed, st.n_failed,
	     st.top_failed ? ", test-level failure" : "");

	return (st.n_failed || st.top_failed || !st.n_run) ? 1 : 0;
}
