/*
 * Method tables of keeld: each daemon/rpc_<area>.c registers its methods with
 * keel_rpc_register_method() from rpc_<area>_register(), called once by keeld's main
 * before the server starts.
 */
#ifndef KEEL_DAEMON_RPC_METHODS_H
#define KEEL_DAEMON_RPC_METHODS_H

#include <stddef.h>

struct keel_rpc_request;

/**
 * calloc(1, \p size) for the context of a method that answers later. On failure
 * \p req is answered (-ENOMEM, "out of memory") and NULL is returned: the handler
 * only has to return.
 */
void *rpc_ctx_calloc(struct keel_rpc_request *req, size_t size);

/** rpc_get_methods, keel_get_version, framework_*, thread_get_stats. */
void rpc_framework_register(void);
/** bdev_get_bdevs, bdev_{malloc,null,aio,error}_{create,delete}, bdev_error_inject_error ... */
void rpc_bdev_register(void);
/** volume_create, volume_destroy, volume_list, volume_get, volume_*_replica
 * (daemon/rpc_volume.c). */
void rpc_volume_register(void);
/** rebuild_get_status, rebuild_start|stop|pause|resume, rebuild_set_options,
 * rebuild_get_history (daemon/rpc_rebuild.c). */
void rpc_rebuild_register(void);
/** nbd_start_export, nbd_stop_export, nbd_get_exports (daemon/rpc_nbd.c). */
void rpc_nbd_register(void);
/** Test-only methods, only with KEEL_DEBUG_RPC=1 in the environment (rpc_debug.c). */
void rpc_debug_register(void);
/** bdev_vcache_create|delete|power_cut|get_stats (daemon/rpc_vcache.c). */
void rpc_vcache_register(void);
/** bdev_nbd_client_create, bdev_nbd_client_delete (daemon/rpc_nbd_client.c). */
void rpc_nbd_client_register(void);

/** ublk_create_target, ublk_start_disk, ublk_get_disks, ... (daemon/rpc_ublk.c). */
void rpc_ublk_register(void);

#endif /* KEEL_DAEMON_RPC_METHODS_H */
