/*
 * LD_PRELOAD library for the differential tests: makes a KVP daemon's open("/dev/vmbus/hv_kvp")
 * return a connected AF_UNIX SOCK_SEQPACKET socket to the test's fake kernel instead.
 *
 * The socket path comes from the environment variable HVKVP_SOCKET. SEQPACKET keeps message
 * boundaries, so every read()/write() of the daemon is one whole 7432-byte message, as on the
 * char device. Every other open() goes to libc unchanged. Built by tests/cdaemon.py with gcc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define KVP_DEVICE "/dev/vmbus/hv_kvp"

static int connect_fake_kernel(int flags)
{
    const char *path = getenv("HVKVP_SOCKET");
    struct sockaddr_un addr;
    int fd, saved;

    if (path == NULL || strlen(path) >= sizeof(addr.sun_path)) {
        errno = ENOENT;
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_SEQPACKET | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0), 0);
    if (fd < 0)
        return -1;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        saved = errno;
        close(fd);
        /* No fake kernel listening is what a missing device looks like. */
        errno = (saved == ECONNREFUSED) ? ENOENT : saved;
        return -1;
    }
    return fd;
}

static int is_kvp_device(const char *path)
{
    return path != NULL && strcmp(path, KVP_DEVICE) == 0;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

#define DEFINE_OPEN(name)                                                   \
    int name(const char *path, int flags, ...)                              \
    {                                                                       \
        static open_fn real;                                                \
        va_list ap;                                                         \
        mode_t mode;                                                        \
        if (is_kvp_device(path))                                            \
            return connect_fake_kernel(flags);                              \
        va_start(ap, flags);                                                \
        mode = mode_arg(flags, ap);                                         \
        va_end(ap);                                                         \
        if (real == NULL)                                                   \
            real = (open_fn)dlsym(RTLD_NEXT, #name);                        \
        return real(path, flags, mode);                                     \
    }

#define DEFINE_OPENAT(name)                                                 \
    int name(int dirfd, const char *path, int flags, ...)                   \
    {                                                                       \
        static openat_fn real;                                              \
        va_list ap;                                                         \
        mode_t mode;                                                        \
        if (is_kvp_device(path))                                            \
            return connect_fake_kernel(flags);                              \
        va_start(ap, flags);                                                \
        mode = mode_arg(flags, ap);                                         \
        va_end(ap);                                                         \
        if (real == NULL)                                                   \
            real = (openat_fn)dlsym(RTLD_NEXT, #name);                      \
        return real(dirfd, path, flags, mode);                              \
    }

DEFINE_OPEN(open)
DEFINE_OPEN(open64)
DEFINE_OPENAT(openat)
DEFINE_OPENAT(openat64)
