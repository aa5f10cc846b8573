/*
 * hv_kvp_shim.c - the part of the KVP transport that only C does well.
 *
 * 1. Compile-time proof that the kernel's <linux/hyperv.h> still has the layout that
 *    pykvpd/protocol.py hard-codes: if a header ever moves a field, the build fails instead of
 *    the host silently reading the wrong bytes.
 * 2. Thin, fd-based wrappers around open/read/write/poll/prctl on /dev/vmbus/hv_kvp.
 *    Every function returns -errno on failure and never touches errno-dependent state
 *    afterwards, so the Python side gets the error without a race on errno.
 *
 * Everything else (framing policy, error mapping, logging) lives in pykvpd/transport.py.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* also set by Python.h when built by cffi */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <linux/hyperv.h>

/* Overridable so tests can prove the assertions bite (gcc -DHVKVP_EXPECTED_MSG_SIZE=7431). */
#ifndef HVKVP_EXPECTED_MSG_SIZE
#define HVKVP_EXPECTED_MSG_SIZE 7432
#endif

/*
 * Reads use a buffer larger than one message so that an oversize message is seen as such
 * (the Python side truncates and logs it) rather than being cut silently by read().
 * 16384 is CONNECTOR_MAX_MSG_SIZE, the largest message any KVP transport ever carried.
 */
#define HVKVP_READ_CAPACITY 16384

#define HVKVP_OFF(member) offsetof(struct hv_kvp_msg, member)
#define HVKVP_ASSERT_OFF(member, expected) \
    _Static_assert(HVKVP_OFF(member) == (expected), "offset of " #member " is not " #expected)

_Static_assert(sizeof(struct hv_kvp_msg) == HVKVP_EXPECTED_MSG_SIZE,
               "sizeof(struct hv_kvp_msg) differs from pykvpd.protocol.MSG_SIZE");
_Static_assert(HVKVP_READ_CAPACITY > HVKVP_EXPECTED_MSG_SIZE, "read buffer must exceed a message");

/* Header / status union. */
HVKVP_ASSERT_OFF(kvp_hdr.operation, 0);
HVKVP_ASSERT_OFF(kvp_hdr.pool, 1);
HVKVP_ASSERT_OFF(error, 0);
_Static_assert(sizeof(((struct hv_kvp_msg *)0)->error) == 4, "status is not 32 bits");

/* GET / SET view. */
HVKVP_ASSERT_OFF(body.kvp_set.data.value_type, 4);
HVKVP_ASSERT_OFF(body.kvp_set.data.key_size, 8);
HVKVP_ASSERT_OFF(body.kvp_set.data.value_size, 12);
HVKVP_ASSERT_OFF(body.kvp_set.data.key, 16);
HVKVP_ASSERT_OFF(body.kvp_set.data.value, 528);
HVKVP_ASSERT_OFF(body.kvp_get.data.key, 16);
HVKVP_ASSERT_OFF(body.kvp_get.data.value, 528);

/* ENUMERATE view (also where the kernel reads a GET result back). */
HVKVP_ASSERT_OFF(body.kvp_enum_data.index, 4);
HVKVP_ASSERT_OFF(body.kvp_enum_data.data.value_type, 8);
HVKVP_ASSERT_OFF(body.kvp_enum_data.data.key_size, 12);
HVKVP_ASSERT_OFF(body.kvp_enum_data.data.value_size, 16);
HVKVP_ASSERT_OFF(body.kvp_enum_data.data.key, 20);
HVKVP_ASSERT_OFF(body.kvp_enum_data.data.value, 532);

/* DELETE and REGISTER views. */
HVKVP_ASSERT_OFF(body.kvp_delete.key_size, 4);
HVKVP_ASSERT_OFF(body.kvp_delete.key, 8);
HVKVP_ASSERT_OFF(body.kvp_register.version, 4);

/* IP view (struct hv_kvp_ipaddr_value at offset 4). */
HVKVP_ASSERT_OFF(body.kvp_ip_val.adapter_id, 4);
HVKVP_ASSERT_OFF(body.kvp_ip_val.addr_family, 260);
HVKVP_ASSERT_OFF(body.kvp_ip_val.dhcp_enabled, 261);
HVKVP_ASSERT_OFF(body.kvp_ip_val.ip_addr, 262);
HVKVP_ASSERT_OFF(body.kvp_ip_val.sub_net, 2310);
HVKVP_ASSERT_OFF(body.kvp_ip_val.gate_way, 4358);
HVKVP_ASSERT_OFF(body.kvp_ip_val.dns_addr, 5382);

/* Field sizes protocol.py uses. */
_Static_assert(HV_KVP_EXCHANGE_MAX_KEY_SIZE == 512, "key field size");
_Static_assert(HV_KVP_EXCHANGE_MAX_VALUE_SIZE == 2048, "value field size");
_Static_assert(sizeof(((struct hv_kvp_msg *)0)->body.kvp_register.version) == 512,
               "register version field size");
_Static_assert(sizeof(((struct hv_kvp_msg *)0)->body.kvp_ip_val.adapter_id) == 256, "adapter_id");
_Static_assert(sizeof(((struct hv_kvp_msg *)0)->body.kvp_ip_val.ip_addr) == 2048, "ip_addr");
_Static_assert(sizeof(((struct hv_kvp_msg *)0)->body.kvp_ip_val.sub_net) == 2048, "sub_net");
_Static_assert(sizeof(((struct hv_kvp_msg *)0)->body.kvp_ip_val.gate_way) == 1024, "gate_way");
_Static_assert(sizeof(((struct hv_kvp_msg *)0)->body.kvp_ip_val.dns_addr) == 2048, "dns_addr");

/* Constants. */
_Static_assert(KVP_OP_GET == 0 && KVP_OP_SET == 1 && KVP_OP_DELETE == 2, "GET/SET/DELETE ops");
_Static_assert(KVP_OP_ENUMERATE == 3 && KVP_OP_GET_IP_INFO == 4 && KVP_OP_SET_IP_INFO == 5,
               "ENUMERATE/IP ops");
_Static_assert(KVP_OP_REGISTER == 4 && KVP_OP_REGISTER1 == 100, "register ops");
_Static_assert(KVP_POOL_EXTERNAL == 0 && KVP_POOL_GUEST == 1 && KVP_POOL_AUTO == 2, "pools 0-2");
_Static_assert(KVP_POOL_AUTO_EXTERNAL == 3 && KVP_POOL_AUTO_INTERNAL == 4 && KVP_POOL_COUNT == 5,
               "pools 3-4");
_Static_assert(HV_S_OK == 0x00000000 && HV_E_FAIL == 0x80004005 && HV_S_CONT == 0x80070103,
               "status codes");
_Static_assert(HV_INVALIDARG == 0x80070057 && HV_GUID_NOTFOUND == 0x80041002, "status codes");
_Static_assert(REG_SZ == 1 && REG_U32 == 4 && REG_U64 == 8, "value types");
_Static_assert(ADDR_FAMILY_NONE == 0 && ADDR_FAMILY_IPV4 == 1 && ADDR_FAMILY_IPV6 == 2,
               "address families");

int hvkvp_msg_size(void)
{
    return (int)sizeof(struct hv_kvp_msg);
}

int hvkvp_open(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* buf must hold HVKVP_READ_CAPACITY bytes; returns the byte count so short/long reads show. */
long hvkvp_read(int fd, unsigned char *buf)
{
    ssize_t n = read(fd, buf, HVKVP_READ_CAPACITY);
    return n < 0 ? -(long)errno : (long)n;
}

/* Writes exactly one message; a short count is returned as is for the caller to judge. */
long hvkvp_write(int fd, const unsigned char *buf)
{
    ssize_t n = write(fd, buf, sizeof(struct hv_kvp_msg));
    return n < 0 ? -(long)errno : (long)n;
}

/* Returns revents (0 on timeout); timeout_ms < 0 waits forever. */
int hvkvp_poll(int fd, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n = poll(&pfd, 1, timeout_ms);
    if (n < 0)
        return -errno;
    return n == 0 ? 0 : pfd.revents;
}

/* Names the calling thread (the main thread names the process: ps, journal, comm). */
int hvkvp_set_name(const char *name)
{
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) < 0 ? -errno : 0;
}
