/*
 * Control commands of the kernel's ublk driver (/dev/ublk-control), internal to ublk/.
 *
 * Each command is one IORING_OP_URING_CMD on a small ring with 128-byte SQEs (the
 * command's ublksrv_ctrl_cmd lives in the SQE). The driver refuses to run control
 * commands without blocking, so io_uring hands them to a kernel worker and the caller
 * waits for the completion: every function here BLOCKS (START_DEV and END_USER_RECOVERY
 * until every queue has fetched, STOP_DEV until in-flight requests drained) and runs on
 * the blocking-work pool, never on a reactor. Each call opens its own ring and control
 * fd, so calls from several pool threads share nothing.
 *
 * Errors: 0 or a negative errno; \p err (may be NULL) gets a line for a person.
 *  -ENODEV: no /dev/ublk-control (driver not loaded: "modprobe ublk_drv"), or no such
 *           device id; -EPERM: needs CAP_SYS_ADMIN; -EEXIST: ADD_DEV of an id in use;
 *  -EBUSY:  START_USER_RECOVERY while the old server's files are still open.
 */
#ifndef KEEL_UBLK_CTRL_H
#define KEEL_UBLK_CTRL_H

#include <stddef.h>
#include <stdint.h>

#include <linux/ublk_cmd.h>

struct io_uring_sqe;

/* Older headers lack these; the values are the kernel's ABI. */
#ifndef UBLK_F_USER_RECOVERY
#define UBLK_F_USER_RECOVERY (1ULL << 3)
#endif
#ifndef UBLK_F_USER_RECOVERY_REISSUE
#define UBLK_F_USER_RECOVERY_REISSUE (1ULL << 4)
#endif

#define UBLK_CTRL_DEV "/dev/ublk-control"
/* Device ids the driver accepts (UBLK_MAX_UBLKS = UBLK_MINORS = 1 << MINORBITS). */
#define UBLK_CTRL_MAX_ID ((1u << 20) - 1)
/* "any id" in ADD_DEV. */
#define UBLK_CTRL_ANY_ID UINT32_MAX

/* Whether the control device exists. Blocking (stat). 0 or -ENODEV with \p err set. */
int ublk_ctrl_probe(char *err, size_t err_len);

/*
 * Send one command \p op for device \p dev_id with buffer \p buf of \p len bytes and
 * inline data \p data0. \return the CQE result (>= 0) or a negative errno.
 */
int ublk_ctrl_cmd(uint32_t op, uint32_t dev_id, void *buf, uint16_t len, uint64_t data0, char *err,
		  size_t err_len);

int ublk_ctrl_add_dev(struct ublksrv_ctrl_dev_info *info, char *err, size_t err_len);
int ublk_ctrl_set_params(uint32_t dev_id, struct ublk_params *params, char *err, size_t err_len);
int ublk_ctrl_get_info(uint32_t dev_id, struct ublksrv_ctrl_dev_info *info, char *err,
		       size_t err_len);
/*
 * Clear a 128-byte SQE of a ring set up with IORING_SETUP_SQE128 and return its command
 * area (the 80 bytes after the first 48). Out of line: struct io_uring_sqe declares only
 * 64 bytes, which the compiler's bounds checks would otherwise hold against us.
 */
void *ublk_sqe128_init(struct io_uring_sqe *sqe);

/* The name of a control opcode for messages ("ADD_DEV"). */
const char *ublk_ctrl_op_name(uint32_t op);

#endif /* KEEL_UBLK_CTRL_H */
