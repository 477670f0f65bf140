/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The socket helpers migrate_reuseport.c and reuseport_migrate_bpf.c take
 * from the selftests' network_helpers, reimplemented for this project in
 * network_helpers.c. Same prototypes and behaviour as upstream, so that
 * the tests compile unmodified.
 */
#ifndef RM_SHIM_NETWORK_HELPERS_H
#define RM_SHIM_NETWORK_HELPERS_H

#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/types.h>

/* Set both SO_RCVTIMEO and SO_SNDTIMEO (the latter also bounds connect())
 * to @timeout_ms, or 3 s if it is not positive, as upstream does.
 * Returns 0, or -1 with errno set. */
int settimeo(int fd, int timeout_ms);

/* Fill @addr for @addr_str (numeric IPv4/IPv6) and @port (host order);
 * store the address length in @len unless it is NULL. Returns 0, or -1. */
int make_sockaddr(int family, const char *addr_str, __u16 port,
		  struct sockaddr_storage *addr, socklen_t *len);

/* The options of the server and client helpers below, as upstream's. */
struct network_helper_opts {
	int timeout_ms;		/* <= 0: 3 s */
	int proto;
	int backlog;		/* > 0 as is; 0: 1; < 0: 0 */
	int (*post_socket_cb)(int fd, void *opts);
	void *cb_opts;
};

/* A socket of @type bound to @addr (listening if a stream socket), with
 * SO_REUSEADDR and the timeouts set and post_socket_cb run before bind():
 * its fd, or -1 with errno set. */
int start_server_addr(int type, const struct sockaddr_storage *addr, socklen_t len,
		      const struct network_helper_opts *opts);

/* A socket of @type connected to @addr_str:@port: its fd, or -1. */
int connect_to_addr_str(int family, int type, const char *addr_str, __u16 port,
			const struct network_helper_opts *opts);

/* The local port of @sock_fd in network byte order, or -1. */
int get_socket_local_port(int sock_fd);

#endif /* RM_SHIM_NETWORK_HELPERS_H */
