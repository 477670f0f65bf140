// SPDX-License-Identifier: GPL-2.0
/* Socket helpers for the standalone selftest runner; see network_helpers.h. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/time.h>

#include "network_helpers.h"

int settimeo(int fd, int timeout_ms)
{
	struct timeval tv = { .tv_sec = 3 };

	if (timeout_ms > 0) {
		tv.tv_sec = timeout_ms / 1000;
		tv.tv_usec = (timeout_ms % 1000) * 1000;
	}

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return -1;
	return 0;
}

int make_sockaddr(int family, const char *addr_str, __u16 port,
		  struct sockaddr_storage *addr, socklen_t *len)
{
	memset(addr, 0, sizeof(*addr));

	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)addr;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		if (addr_str && inet_pton(AF_INET, addr_str, &sin->sin_addr) != 1)
			goto bad_addr;
		if (len)
			*len = sizeof(*sin);
		return 0;
	}

	if (family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)addr;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		if (addr_str && inet_pton(AF_INET6, addr_str, &sin6->sin6_addr) != 1)
			goto bad_addr;
		if (len)
			*len = sizeof(*sin6);
		return 0;
	}

	errno = EAFNOSUPPORT;
	return -1;

bad_addr:
	errno = EINVAL;
	return -1;
}

static const struct network_helper_opts no_opts;

/* close() that keeps the errno of what failed before it */
static int close_keep_errno(int fd)
{
	int saved = errno;

	close(fd);
	errno = saved;
	return -1;
}

int start_server_addr(int type, const struct sockaddr_storage *addr, socklen_t len,
		      const struct network_helper_opts *opts)
{
	int fd, one = 1, backlog;

	if (!opts)
		opts = &no_opts;
	fd = socket(addr->ss_family, type, opts->proto);
	if (fd < 0)
		return -1;
	if (settimeo(fd, opts->timeout_ms))
		return close_keep_errno(fd);
	if (type == SOCK_STREAM &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		return close_keep_errno(fd);
	if (opts->post_socket_cb && opts->post_socket_cb(fd, opts->cb_opts))
		return close_keep_errno(fd);
	if (bind(fd, (const struct sockaddr *)addr, len))
		return close_keep_errno(fd);
	backlog = opts->backlog > 0 ? opts->backlog : opts->backlog == 0 ? 1 : 0;
	if (type == SOCK_STREAM && listen(fd, backlog))
		return close_keep_errno(fd);
	return fd;
}

int connect_to_addr_str(int family, int type, const char *addr_str, __u16 port,
			const struct network_helper_opts *opts)
{
	struct sockaddr_storage addr;
	socklen_t len;
	int fd;

	if (!opts)
		opts = &no_opts;
	if (make_sockaddr(family, addr_str, port, &addr, &len))
		return -1;
	fd = socket(family, type, opts->proto);
	if (fd < 0)
		return -1;
	if (settimeo(fd, opts->timeout_ms) ||
	    (opts->post_socket_cb && opts->post_socket_cb(fd, opts->cb_opts)) ||
	    connect(fd, (const struct sockaddr *)&addr, len))
		return close_keep_errno(fd);
	return fd;
}

int get_socket_local_port(int sock_fd)
{
	struct sockaddr_storage addr;
	socklen_t len = sizeof(addr);

	if (getsockname(sock_fd, (struct sockaddr *)&addr, &len))
		return -1;
	if (addr.ss_family == AF_INET)
		return ((struct sockaddr_in *)&addr)->sin_port;
	if (addr.ss_family == AF_INET6)
		return ((struct sockaddr_in6 *)&addr)->sin6_port;
	return -1;
}
