/*
 * What a volume shows the outside: the names of its states, the info snapshot and
 * its JSON form (RPC and keelctl print this). Owner thread (keel_nexus_get_info).
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "nexus_internal.h"

const char *keel_nexus_state_name(enum keel_nexus_state state)
{
	switch (state) {
	case KEEL_NEXUS_ONLINE:
		return "online";
	case KEEL_NEXUS_DEGRADED:
		return "degraded";
	case KEEL_NEXUS_FAULTED:
		return "faulted";
	}
	return "unknown";
}

const char *keel_nexus_replica_state_name(enum keel_nexus_replica_state state)
{
	switch (state) {
	case KEEL_NEXUS_REPLICA_HEALTHY:
		return "healthy";
	case KEEL_NEXUS_REPLICA_REBUILDING:
		return "rebuilding";
	case KEEL_NEXUS_REPLICA_FAULTED:
		return "faulted";
	case KEEL_NEXUS_REPLICA_OFFLINE:
		return "offline";
	}
	return "unknown";
}

const char *keel_nexus_fault_reason_name(enum keel_nexus_fault_reason reason)
{
	switch (reason) {
	case KEEL_NEXUS_REASON_NONE:
		return "none";
	case KEEL_NEXUS_REASON_IO_ERROR:
		return "io_error";
	case KEEL_NEXUS_REASON_REMOVED:
		return "removed";
	case KEEL_NEXUS_REASON_STALE:
		return "stale";
	case KEEL_NEXUS_REASON_ADMIN:
		return "admin";
	case KEEL_NEXUS_REASON_CANT_OPEN:
		return "cant_open";
	}
	return "unknown";
}

enum keel_nexus_state keel_nexus_get_state(const struct keel_nexus *nexus)
{
	return ((const struct nexus *)nexus)->state;
}

int keel_nexus_get_info(struct keel_nexus *nexus, struct keel_nexus_info *info)
{
	struct nexus *n = (struct nexus *)nexus;

	memset(info, 0, sizeof(*info));
	snprintf(info->name, sizeof(info->name), "%s", n->name);
	keel_uuid_fmt(n->uuid, info->uuid);
	info->state = n->state;
	snprintf(info->state_detail, sizeof(info->state_detail), "%s", n->state_detail);
	info->size_bytes = n->volume_size;
	info->block_size = n->block_size;
	info->data_offset = n->data_offset;
	info->generation = n->generation;
	info->unclean_shutdown = n->unclean_shutdown;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		const struct nexus_replica *r = &n->replicas[s];
		struct keel_nexus_replica_info *ri;

		if (!r->used) {
			continue;
		}
		ri = &info->replicas[info->num_replicas++];
		snprintf(ri->bdev_name, sizeof(ri->bdev_name), "%s", r->bdev_name);
		if (!keel_uuid_is_null(r->uuid)) {
			keel_uuid_fmt(r->uuid, ri->uuid);
		}
		ri->state = r->state;
		ri->reason = r->state == KEEL_NEXUS_REPLICA_FAULTED ? r->reason
								    : KEEL_NEXUS_REASON_NONE;
		ri->generation = r->generation;
		ri->read_errors_repaired = atomic_load(&r->read_errors_repaired);
		if (r->state != KEEL_NEXUS_REPLICA_HEALTHY) {
			snprintf(ri->detail, sizeof(ri->detail), "%s", r->detail);
		}
	}
	return 0;
}

struct json_t *keel_nexus_info_to_json(const struct keel_nexus_info *info)
{
	json_t *obj = json_object();
	json_t *arr = json_array();

	if (obj == NULL || arr == NULL) {
		goto out_free;
	}
	json_object_set_new(obj, "name", json_string(info->name));
	json_object_set_new(obj, "uuid", json_string(info->uuid));
	json_object_set_new(obj, "state", json_string(keel_nexus_state_name(info->state)));
	json_object_set_new(obj, "state_detail", json_string(info->state_detail));
	json_object_set_new(obj, "size", json_integer((json_int_t)info->size_bytes));
	json_object_set_new(obj, "block_size", json_integer(info->block_size));
	json_object_set_new(obj, "data_offset", json_integer((json_int_t)info->data_offset));
	json_object_set_new(obj, "generation", json_integer((json_int_t)info->generation));
	json_object_set_new(obj, "unclean_shutdown", json_boolean(info->unclean_shutdown));
	for (uint32_t i = 0; i < info->num_replicas; i++) {
		const struct keel_nexus_replica_info *ri = &info->replicas[i];
		json_t *r = json_object();

		if (r == NULL) {
			goto out_free;
		}
		json_object_set_new(r, "bdev",
				    ri->bdev_name[0] ? json_string(ri->bdev_name) : json_null());
		json_object_set_new(r, "uuid", json_string(ri->uuid));
		json_object_set_new(r, "state",
				    json_string(keel_nexus_replica_state_name(ri->state)));
		json_object_set_new(r, "reason",
				    json_string(keel_nexus_fault_reason_name(ri->reason)));
		json_object_set_new(r, "generation", json_integer((json_int_t)ri->generation));
		json_object_set_new(r, "detail", json_string(ri->detail));
		json_object_set_new(r, "read_errors_repaired",
				    json_integer((json_int_t)ri->read_errors_repaired));
		json_array_append_new(arr, r);
	}
	json_object_set_new(obj, "replicas", arr);
	return obj;

out_free:
	json_decref(arr);
	json_decref(obj);
	return NULL;
}
