/*
 * ublk control commands: one URING_CMD per call on a private 128-byte-SQE ring.
 * Blocking; see ublk_ctrl.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ublk_ctrl.h"

const char *ublk_ctrl_op_name(uint32_t op)
{
	switch (op) {
	case UBLK_CMD_GET_DEV_INFO:
		return "GET_DEV_INFO";
	case UBLK_CMD_ADD_DEV:
		return "ADD_DEV";
	case UBLK_CMD_DEL_DEV:
		return "DEL_DEV";
	case UBLK_CMD_START_DEV:
		return "START_DEV";
	case UBLK_CMD_STOP_DEV:
		return "STOP_DEV";
	case UBLK_CMD_SET_PARAMS:
		return "SET_PARAMS";
	case UBLK_CMD_START_USER_RECOVERY:
		return "START_USER_RECOVERY";
	case UBLK_CMD_END_USER_RECOVERY:
		return "END_USER_RECOVERY";
	default:
		return "?";
	}
}

__attribute__((noinline)) void *ublk_sqe128_init(struct io_uring_sqe *sqe)
{
	uint8_t *p = (uint8_t *)sqe;

	memset(p, 0, 128);
	return p + offsetof(struct io_uring_sqe, cmd);
}

static void ublk_ctrl_err(char *err, size_t len, const char *fmt, int rc, const char *what)
{
	if (err != NULL && len > 0) {
		snprintf(err, len, fmt, what, strerror(-rc));
	}
}

int ublk_ctrl_probe(char *err, size_t err_len)
{
	struct stat st;

	if (stat(UBLK_CTRL_DEV, &st) != 0 || !S_ISCHR(st.st_mode)) {
		if (err != NULL && err_len > 0) {
			snprintf(err, err_len,
				 "%s not found: the kernel's ublk driver is not loaded "
				 "(modprobe ublk_drv; needs CONFIG_BLK_DEV_UBLK, Linux >= 6.0)",
				 UBLK_CTRL_DEV);
		}
		return -ENODEV;
	}
	return 0;
}

int ublk_ctrl_cmd(uint32_t op, uint32_t dev_id, void *buf, uint16_t len, uint64_t data0, char *err,
		  size_t err_len)
{
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	struct ublksrv_ctrl_cmd *cmd;
	int fd, rc;

	fd = open(UBLK_CTRL_DEV, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		if (rc == -ENOENT || rc == -ENXIO || rc == -ENODEV) {
			ublk_ctrl_probe(err, err_len);
			return -ENODEV;
		}
		ublk_ctrl_err(err, err_len, "cannot open %s: %s", rc, UBLK_CTRL_DEV);
		return rc;
	}
	rc = io_uring_queue_init(4, &ring, IORING_SETUP_SQE128);
	if (rc < 0) {
		ublk_ctrl_err(err, err_len, "io_uring with 128-byte SQEs (%s): %s", rc,
			      "needed by ublk");
		close(fd);
		return rc;
	}
	sqe = io_uring_get_sqe(&ring);
	cmd = ublk_sqe128_init(sqe);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	sqe->cmd_op = op;
	cmd->dev_id = dev_id;
	cmd->queue_id = (uint16_t)-1;
	cmd->addr = (uint64_t)(uintptr_t)buf;
	cmd->len = len;
	cmd->data[0] = data0;
	rc = io_uring_submit(&ring);
	if (rc >= 0) {
		do {
			rc = io_uring_wait_cqe(&ring, &cqe);
		} while (rc == -EINTR);
	}
	if (rc == 0) {
		rc = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
	}
	io_uring_queue_exit(&ring);
	close(fd);
	if (rc < 0 && err != NULL && err_len > 0) {
		if (rc == -EPERM || rc == -EACCES) {
			snprintf(err, err_len, "ublk %s: %s (needs root or CAP_SYS_ADMIN)",
				 ublk_ctrl_op_name(op), strerror(-rc));
		} else {
			snprintf(err, err_len, "ublk %s of device %u: %s", ublk_ctrl_op_name(op),
				 dev_id, strerror(-rc));
		}
	}
	return rc;
}

int ublk_ctrl_add_dev(struct ublksrv_ctrl_dev_info *info, char *err, size_t err_len)
{
	return ublk_ctrl_cmd(UBLK_CMD_ADD_DEV, info->dev_id, info, sizeof(*info), 0, err, err_len);
}

int ublk_ctrl_set_params(uint32_t dev_id, struct ublk_params *params, char *err, size_t err_len)
{
	params->len = sizeof(*params);
	return ublk_ctrl_cmd(UBLK_CMD_SET_PARAMS, dev_id, params, sizeof(*params), 0, err, err_len);
}

int ublk_ctrl_get_info(uint32_t dev_id, struct ublksrv_ctrl_dev_info *info, char *err,
		       size_t err_len)
{
	memset(info, 0, sizeof(*info));
	return ublk_ctrl_cmd(UBLK_CMD_GET_DEV_INFO, dev_id, info, sizeof(*info), 0, err, err_len);
}
