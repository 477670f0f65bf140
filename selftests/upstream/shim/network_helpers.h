/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The two socket helpers migrate_reuseport.c takes from the selftests'
 * network_helpers, reimplemented for this project in network_helpers.c.
 * Same prototypes as upstream so the test compiles unmodified.
 */
#ifndef RM_SHIM_NETWORK_HELPERS_H
#define RM_SHIM_NETWORK_HELPERS_H

#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/types.h>

/* Set both SO_RCVTIMEO and SO_SNDTIMEO (the latter also bounds connect()).
 * Returns 0, or -1 with errno set. */
int settimeo(int fd, int timeout_ms);

/* Fill @addr for @addr_str (numeric IPv4/IPv6) and @port (host order);
 * store the address length in @len unless it is NULL. Returns 0, or -1. */
int make_sockaddr(int family, const char *addr_str, __u16 port,
		  struct sockaddr_storage *addr, socklen_t *len);

#endif /* RM_SHIM_NETWORK_HELPERS_H */
