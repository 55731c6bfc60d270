// LD_PRELOAD shim that keeps a server on the loopback interface.
//
// TFF's worker_binary always listens on "[::]:PORT" (every interface, no TLS) and has no flag to
// choose the address. Preloaded into it, this library rewrites a bind() to a wildcard address into
// a bind() to loopback, so the service is reachable from this machine only. IPv6 wildcards become
// the IPv4-mapped ::ffff:127.0.0.1, which accepts connections to 127.0.0.1.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static bind_fn real_bind = NULL;
  if (real_bind == NULL) {
    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
  }
  if (addr != NULL && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    struct sockaddr_in v4;
    memcpy(&v4, addr, sizeof(v4));
    if (v4.sin_addr.s_addr == htonl(INADDR_ANY)) {
      v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      return real_bind(fd, (const struct sockaddr *)&v4, sizeof(v4));
    }
  } else if (addr != NULL && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 v6;
    memcpy(&v6, addr, sizeof(v6));
    if (memcmp(&v6.sin6_addr, &in6addr_any, sizeof(struct in6_addr)) == 0) {
      static const unsigned char mapped_loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                                        0, 0, 0xff, 0xff, 127, 0, 0, 1};
      memcpy(&v6.sin6_addr, mapped_loopback, sizeof(mapped_loopback));
      return real_bind(fd, (const struct sockaddr *)&v6, sizeof(v6));
    }
  }
  return real_bind(fd, addr, len);
}
