/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Minimal replacement for the BPF selftests' test_progs.h, written for this
 * project so that one file of prog_tests/ can be compiled unmodified and
 * run on its own, without test_progs and without vmlinux BTF. See ../README.md.
 *
 * It provides only what the tests we run need: the ASSERT_* checks (each
 * evaluates its arguments once, reports a failure to the harness and
 * yields true when the check held) and test__start_subtest(). The harness
 * that implements them and prints the TAP lines is harness.c.
 */
#ifndef RM_SHIM_TEST_PROGS_H
#define RM_SHIM_TEST_PROGS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#ifndef ARRAY_SIZE
#define ARRAY_SIZE(x) (sizeof(x) / sizeof((x)[0]))
#endif

/*
 * Ends the running subtest (printing its TAP line) and starts @name.
 * Always returns true: the standalone runner has no subtest filter.
 */
bool test__start_subtest(const char *name);

/* As test_progs's: a new network namespace with lo up, entered. */
struct netns_obj;
struct netns_obj *netns_new(const char *name, bool open);
void netns_free(struct netns_obj *netns);

/* As test_progs's: 0, or -1 with a failed check. */
int write_sysctl(const char *sysctl, const char *value);

/*
 * Records the outcome of one check. On failure the message (built from
 * @fmt) is printed to stderr and, if it is the first failure of the
 * running subtest, kept for its "not ok" line. Returns @ok.
 */
bool rm_shim_check(bool ok, const char *file, int line, const char *tag,
		   const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/* errno text for a failed check, or "" when the value does not look like
 * a failed syscall (errno is only meaningful right after a -1). */
const char *rm_shim_errno_note(long long value, int saved_errno);

/* @sa and @sb are the unexpanded argument texts, for the message. */
#define RM_SHIM_CMP(a, op, b, sa, sb, tag) ({				\
	typeof(a) rm_a_ = (a);						\
	typeof(b) rm_b_ = (b);						\
	int rm_errno_ = errno;						\
	rm_shim_check(rm_a_ op rm_b_, __FILE__, __LINE__, (tag),	\
		      "want %s %s %s, got %lld vs %lld%s", sa, #op, sb,	\
		      (long long)rm_a_, (long long)rm_b_,		\
		      rm_shim_errno_note((long long)rm_a_, rm_errno_)); \
})

#define ASSERT_EQ(a, b, tag)	RM_SHIM_CMP(a, ==, b, #a, #b, tag)
#define ASSERT_NEQ(a, b, tag)	RM_SHIM_CMP(a, !=, b, #a, #b, tag)
#define ASSERT_LT(a, b, tag)	RM_SHIM_CMP(a, <, b, #a, #b, tag)
#define ASSERT_LE(a, b, tag)	RM_SHIM_CMP(a, <=, b, #a, #b, tag)
#define ASSERT_GT(a, b, tag)	RM_SHIM_CMP(a, >, b, #a, #b, tag)
#define ASSERT_GE(a, b, tag)	RM_SHIM_CMP(a, >=, b, #a, #b, tag)

#define ASSERT_TRUE(x, tag) ({						\
	bool rm_v_ = (x);						\
	rm_shim_check(rm_v_, __FILE__, __LINE__, (tag),		\
		      "want %s true, got false", #x);			\
})

#define ASSERT_FALSE(x, tag) ({					\
	bool rm_v_ = (x);						\
	rm_shim_check(!rm_v_, __FILE__, __LINE__, (tag),		\
		      "want %s false, got true", #x);			\
})

/* Success is 0; a syscall-style -1 or a negative error code fails. */
#define ASSERT_OK(x, tag) ({						\
	long long rm_v_ = (long long)(x);				\
	int rm_errno_ = errno;						\
	rm_shim_check(rm_v_ == 0, __FILE__, __LINE__, (tag),		\
		      "want %s == 0, got %lld%s", #x, rm_v_,		\
		      rm_shim_errno_note(rm_v_, rm_errno_));		\
})

#define ASSERT_ERR(x, tag) ({						\
	long long rm_v_ = (long long)(x);				\
	rm_shim_check(rm_v_ < 0, __FILE__, __LINE__, (tag),		\
		      "want %s < 0, got %lld", #x, rm_v_);		\
})

/* libbpf >= 1.0 returns NULL and sets errno; older code used ERR_PTR(). */
#define RM_SHIM_BAD_PTR(p)						\
	(!(p) || (unsigned long)(p) >= (unsigned long)-4095)

#define ASSERT_OK_PTR(p, tag) ({					\
	const void *rm_p_ = (p);					\
	int rm_errno_ = errno;						\
	rm_shim_check(!RM_SHIM_BAD_PTR(rm_p_), __FILE__, __LINE__, (tag), \
		      "want %s to be a valid pointer, got %p (errno %d: %s)", \
		      #p, rm_p_, rm_errno_, strerror(rm_errno_));	\
})

#define ASSERT_NULL(p, tag) ({						\
	const void *rm_p_ = (p);					\
	rm_shim_check(!rm_p_, __FILE__, __LINE__, (tag),		\
		      "want %s NULL, got %p", #p, rm_p_);		\
})

#define ASSERT_STREQ(a, b, tag) ({					\
	const char *rm_s1_ = (a);					\
	const char *rm_s2_ = (b);					\
	rm_shim_check(strcmp(rm_s1_, rm_s2_) == 0, __FILE__, __LINE__,	\
		      (tag), "want %s equal to %s, got \"%.64s\" vs \"%.64s\"", \
		      #a, #b, rm_s1_, rm_s2_);				\
})

#endif /* RM_SHIM_TEST_PROGS_H */
