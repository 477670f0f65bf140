/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the C choice cut out of the kernel tree needs to build on the host:
 * the kernel's integer types and access macros, and the fields of struct
 * sock and struct sock_reuseport that it reads. Layouts, not behaviour: the
 * functions are the kernel's own (build.rs).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
/* include/linux/minmax.h, without its type checks */
#define min_t(type, x, y) ((type)(x) < (type)(y) ? (type)(x) : (type)(y))

/* include/net/tcp_states.h */
enum { TCP_ESTABLISHED = 1 };

struct sock {
	unsigned char sk_state;
	int sk_incoming_cpu;
	u32 sk_ack_backlog;
	u32 sk_max_ack_backlog;
};

struct sock_reuseport {
	u16 max_socks;
	u16 num_socks;
	unsigned int incoming_cpu;
	struct sock *socks[];
};

/* The CPU the choice runs on, set by the test. */
extern int shim_this_cpu;
static inline int raw_smp_processor_id(void)
{
	return shim_this_cpu;
}
