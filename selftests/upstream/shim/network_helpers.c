// SPDX-License-Identifier: GPL-2.0
/* Socket helpers for the standalone selftest runner; see network_helpers.h. */
#include <errno.h>
#include <string.h>
#include <sys/time.h>

#include "network_helpers.h"

int settimeo(int fd, int timeout_ms)
{
	struct timeval tv;

	if (timeout_ms < 0) {
		errno = EINVAL;
		return -1;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;

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
