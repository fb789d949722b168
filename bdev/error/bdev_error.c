/*
 * error bdev: wraps a base bdev (claimed, so nobody else writes behind our back)
 * and injects failures by rule. One rule per I/O type plus one for every type;
 * a type rule wins over the catch-all. A rule fails `count` matching requests (0 =
 * until cleared), only every Nth one if every_nth > 1, with `error`, after an
 * optional delay, or completes them without touching the base (drop: a disk that
 * loses writes). Delayed requests wait in a per-channel queue drained by a timed
 * poller, then fail or pass through. Everything else passes through to the base.
 *
 * Rules change at run time from any keel thread while I/O runs on others, so they
 * sit under a mutex; a lock-free "any rule?" check keeps the no-rule path cheap.
 */
#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/bdev_module.h"
#include "keel/log.h"

#include "bdev_stack.h"

#define ERROR_ALL KEEL_BDEV_IO_NUM_TYPES
#define ERROR_DELAY_POLL_US 50

struct error_rule_state {
	bool active;
	struct keel_bdev_error_rule rule;
	uint64_t hits;     /* matching requests seen */
	uint64_t injected; /* requests this rule failed or delayed */
};

struct error_disk {
	struct keel_bdev bdev;
	char name[KEEL_BDEV_NAME_MAX + 1];
	char io_dev_anchor;     /* our io_device; distinct from the bdev's own (bdev + 1) */
	struct bdev_stack base; /* the base bdev, claimed */
	pthread_mutex_t lock;
	uint32_t nrules; /* atomic */
	struct error_rule_state rules[ERROR_ALL + 1];
};

struct error_channel {
	struct error_disk *disk;
	struct keel_io_channel *base_ch;
	struct keel_poller *delay_poller;
	TAILQ_HEAD(, keel_bdev_io) delayed;
};

struct error_io {
	uint64_t deadline_ns;
	int error;
	bool drop;
};

static uint32_t error_get_ctx_size(void)
{
	return sizeof(struct error_io);
}

struct keel_bdev_module keel_bdev_error_module = {
	.name = "error",
	.get_ctx_size = error_get_ctx_size,
};

static void error_base_done(void *cb_arg, int status)
{
	keel_bdev_io_complete(cb_arg, status);
}

static void error_pass_through(struct error_channel *ech, struct keel_bdev_io *io)
{
	struct keel_bdev_desc *bd = ech->disk->base.base_desc;
	uint64_t off = keel_bdev_io_offset_bytes(io), len = keel_bdev_io_num_bytes(io);
	int rc;

	switch (io->type) {
	case KEEL_BDEV_IO_READ:
		rc = keel_bdev_readv(bd, ech->base_ch, io->iovs, io->iovcnt, off, len,
				     error_base_done, io);
		break;
	case KEEL_BDEV_IO_WRITE:
		rc = keel_bdev_writev(bd, ech->base_ch, io->iovs, io->iovcnt, off, len, io->flags,
				      error_base_done, io);
		break;
	case KEEL_BDEV_IO_FLUSH:
		rc = keel_bdev_flush(bd, ech->base_ch, off, len, error_base_done, io);
		break;
	case KEEL_BDEV_IO_UNMAP:
		rc = keel_bdev_unmap(bd, ech->base_ch, off, len, error_base_done, io);
		break;
	case KEEL_BDEV_IO_WRITE_ZEROES:
		rc = keel_bdev_write_zeroes_ext(bd, ech->base_ch, off, len, io->flags,
						error_base_done, io);
		break;
	case KEEL_BDEV_IO_RESET:
		rc = keel_bdev_reset(bd, ech->base_ch, error_base_done, io);
		break;
	case KEEL_BDEV_IO_GET_ALLOCATION:
		/* The base writes its answer straight into the caller's array. */
		rc = keel_bdev_get_allocation(
			bd, ech->base_ch, off, len, io->iovs[0].iov_base,
			(uint32_t)(io->iovs[0].iov_len / sizeof(struct keel_bdev_extent)),
			error_base_done, io);
		break;
	default:
		rc = -ENOTSUP;
		break;
	}
	if (rc) {
		keel_bdev_io_complete(io, rc);
	}
}

static void error_finish(struct error_channel *ech, struct keel_bdev_io *io)
{
	struct error_io *eio = keel_bdev_io_get_ctx(io);

	if (eio->error) {
		keel_bdev_io_complete(io, eio->error);
	} else if (eio->drop) {
		keel_bdev_io_complete(io, 0);
	} else {
		error_pass_through(ech, io);
	}
}

static int error_delay_poll(void *arg)
{
	struct error_channel *ech = arg;
	struct keel_bdev_io *io, *tmp;
	uint64_t now = keel_now_ns();
	int busy = KEEL_POLLER_IDLE;

	for (io = TAILQ_FIRST(&ech->delayed); io; io = tmp) {
		struct error_io *eio = keel_bdev_io_get_ctx(io);

		tmp = TAILQ_NEXT(io, module_link);
		if (eio->deadline_ns > now) {
			continue;
		}
		TAILQ_REMOVE(&ech->delayed, io, module_link);
		error_finish(ech, io);
		busy = KEEL_POLLER_BUSY;
	}
	if (TAILQ_EMPTY(&ech->delayed)) {
		keel_poller_unregister(&ech->delay_poller);
	}
	return busy;
}

/* Decide this request's fate under the rule lock. \return true if a rule matched. */
static bool error_match(struct error_disk *d, enum keel_bdev_io_type type, struct error_io *eio)
{
	struct error_rule_state *rs;
	bool inject = false;

	pthread_mutex_lock(&d->lock);
	rs = d->rules[type].active        ? &d->rules[type]
	     : d->rules[ERROR_ALL].active ? &d->rules[ERROR_ALL]
					  : NULL;
	if (rs) {
		rs->hits++;
		inject = rs->rule.every_nth <= 1 || rs->hits % rs->rule.every_nth == 0;
		if (inject) {
			rs->injected++;
			eio->error = rs->rule.error;
			eio->drop = rs->rule.drop;
			eio->deadline_ns = rs->rule.delay_us
						   ? keel_now_ns() +
							     (uint64_t)rs->rule.delay_us * 1000
						   : 0;
			if (rs->rule.count && rs->injected >= rs->rule.count) {
				rs->active = false;
				__atomic_sub_fetch(&d->nrules, 1, __ATOMIC_RELAXED);
			}
		}
	}
	pthread_mutex_unlock(&d->lock);
	return inject;
}

static void error_submit(struct keel_io_channel *ch, struct keel_bdev_io *io)
{
	struct error_channel *ech = keel_io_channel_get_ctx(ch);
	struct error_disk *d = ech->disk;
	struct error_io *eio = keel_bdev_io_get_ctx(io);

	if (!__atomic_load_n(&d->nrules, __ATOMIC_RELAXED) || !error_match(d, io->type, eio)) {
		error_pass_through(ech, io);
		return;
	}
	if (eio->deadline_ns) {
		TAILQ_INSERT_TAIL(&ech->delayed, io, module_link);
		if (!ech->delay_poller) {
			ech->delay_poller = keel_poller_register(
				error_delay_poll, ech, ERROR_DELAY_POLL_US, "error_delay");
		}
		if (!ech->delay_poller) {
			/* Cannot wait: deliver the fault now rather than lose the request. */
			TAILQ_REMOVE(&ech->delayed, io, module_link);
			error_finish(ech, io);
		}
		return;
	}
	error_finish(ech, io);
}

static bool error_io_type_supported(void *ctx, enum keel_bdev_io_type type)
{
	struct error_disk *d = ctx;

	return keel_bdev_io_type_supported(bdev_stack_base(&d->base), type);
}

static int error_channel_create(void *io_device, void *ctx_buf)
{
	struct error_disk *d = (struct error_disk *)((char *)io_device -
						     offsetof(struct error_disk, io_dev_anchor));
	struct error_channel *ech = ctx_buf;

	ech->disk = d;
	TAILQ_INIT(&ech->delayed);
	ech->base_ch = keel_bdev_get_io_channel(d->base.base_desc);
	return ech->base_ch ? 0 : -ENODEV;
}

static void error_channel_destroy(void *io_device, void *ctx_buf)
{
	struct error_channel *ech = ctx_buf;
	struct keel_bdev_io *io;

	/* The core keeps this channel until its requests finished; be safe anyway. */
	while ((io = TAILQ_FIRST(&ech->delayed))) {
		TAILQ_REMOVE(&ech->delayed, io, module_link);
		keel_bdev_io_complete(io, -ENODEV);
	}
	keel_poller_unregister(&ech->delay_poller);
	keel_put_io_channel(ech->base_ch);
}

static struct keel_io_channel *error_get_io_channel(void *ctx)
{
	struct error_disk *d = ctx;

	return keel_get_io_channel(&d->io_dev_anchor);
}

static void error_io_dev_unregistered(void *io_device)
{
	struct error_disk *d = (struct error_disk *)((char *)io_device -
						     offsetof(struct error_disk, io_dev_anchor));

	pthread_mutex_destroy(&d->lock);
	keel_bdev_destruct_done(&d->bdev);
	free(d);
}

static int error_destruct(void *ctx)
{
	struct error_disk *d = ctx;

	return bdev_stack_destruct(&d->base);
}

static void error_dump_info_json(void *ctx, struct json_t *obj)
{
	struct error_disk *d = ctx;
	json_t *e = json_object(), *rules = json_array();

	if (!e || !rules) {
		json_decref(e);
		json_decref(rules);
		return;
	}
	json_object_set_new(e, "base_bdev",
			    json_string(keel_bdev_get_name(bdev_stack_base(&d->base))));
	pthread_mutex_lock(&d->lock);
	for (int t = 0; t <= ERROR_ALL; t++) {
		struct error_rule_state *rs = &d->rules[t];
		json_t *r;

		if (!rs->active) {
			continue;
		}
		r = json_object();
		if (!r) {
			break;
		}
		json_object_set_new(
			r, "io_type",
			json_string(t == ERROR_ALL ? "all" : keel_bdev_io_type_name(t)));
		json_object_set_new(r, "count", json_integer(rs->rule.count));
		json_object_set_new(r, "every_nth", json_integer(rs->rule.every_nth));
		json_object_set_new(r, "error", json_integer(rs->rule.error));
		json_object_set_new(r, "delay_us", json_integer(rs->rule.delay_us));
		json_object_set_new(r, "hits", json_integer((json_int_t)rs->hits));
		json_object_set_new(r, "injected", json_integer((json_int_t)rs->injected));
		json_array_append_new(rules, r);
	}
	pthread_mutex_unlock(&d->lock);
	json_object_set_new(e, "rules", rules);
	json_object_set_new(obj, "error", e);
}

static const struct keel_bdev_fn_table g_error_fn_table = {
	.destruct = error_destruct,
	.submit_request = error_submit,
	.io_type_supported = error_io_type_supported,
	.get_io_channel = error_get_io_channel,
	.dump_info_json = error_dump_info_json,
};

static void error_create_undo(void *io_device)
{
	struct error_disk *d = (struct error_disk *)((char *)io_device -
						     offsetof(struct error_disk, io_dev_anchor));

	pthread_mutex_destroy(&d->lock);
	free(d);
}

int keel_bdev_error_create(const char *name, const char *base_name, struct keel_bdev **bdev_out)
{
	struct error_disk *d;
	int rc;

	if (!name || !base_name || !bdev_out || !keel_thread_get_current()) {
		return -EINVAL;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		return -ENOMEM;
	}
	snprintf(d->name, sizeof(d->name), "%s", name);
	pthread_mutex_init(&d->lock, NULL);
	d->bdev.name = d->name;
	d->bdev.module = &keel_bdev_error_module;
	rc = bdev_stack_open(&d->base, &d->bdev, base_name, &d->io_dev_anchor,
			     error_io_dev_unregistered);
	if (rc) {
		goto out_free_disk;
	}
	d->bdev.product_name = "Error injection disk";
	d->bdev.write_cache = keel_bdev_has_write_cache(bdev_stack_base(&d->base));
	d->bdev.ctxt = d;
	d->bdev.fn_table = &g_error_fn_table;
	rc = bdev_stack_register(&d->base, error_channel_create, error_channel_destroy,
				 sizeof(struct error_channel), error_create_undo);
	if (rc) {
		return rc; /* d is freed */
	}
	*bdev_out = &d->bdev;
	return 0;

out_free_disk:
	pthread_mutex_destroy(&d->lock);
	free(d);
	return rc;
}

static struct error_disk *error_find(const char *name)
{
	return bdev_stack_find(name, &keel_bdev_error_module);
}

int keel_bdev_error_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct error_disk *d = error_find(name);

	if (!d) {
		return -ENODEV;
	}
	bdev_stack_delete(&d->base, cb_fn, cb_arg);
	return 0;
}

int keel_bdev_error_inject(const char *name, const struct keel_bdev_error_rule *rule)
{
	struct error_disk *d;

	if (!rule || (unsigned)rule->io_type > KEEL_BDEV_IO_NUM_TYPES || rule->error > 0 ||
	    (rule->error == 0 && rule->delay_us == 0 && !rule->drop) ||
	    (rule->error != 0 && rule->drop) || (rule->error == -ENOMEM && rule->count == 0)) {
		return -EINVAL;
	}
	d = error_find(name);
	if (!d) {
		return -ENODEV;
	}
	pthread_mutex_lock(&d->lock);
	if (!d->rules[rule->io_type].active) {
		__atomic_add_fetch(&d->nrules, 1, __ATOMIC_RELAXED);
	}
	d->rules[rule->io_type].active = true;
	d->rules[rule->io_type].rule = *rule;
	d->rules[rule->io_type].hits = 0;
	d->rules[rule->io_type].injected = 0;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

int keel_bdev_error_clear(const char *name)
{
	struct error_disk *d = error_find(name);

	if (!d) {
		return -ENODEV;
	}
	pthread_mutex_lock(&d->lock);
	memset(d->rules, 0, sizeof(d->rules));
	__atomic_store_n(&d->nrules, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&d->lock);
	return 0;
}
