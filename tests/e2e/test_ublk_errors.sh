#!/usr/bin/env bash
# The ublk RPCs on a host without the ublk driver (this machine's kernel has none): every
# request gets a clear error (the driver one names "modprobe ublk_drv"), nothing is left
# half-created, and keeld stays healthy. The driver itself is tested in a VM
# (ctest vm_keeld_ublk). Skips where /dev/ublk-control exists: the errors differ there.
. "$(dirname "$0")/lib.sh"

[ -e /dev/ublk-control ] && skip "this kernel has the ublk driver: see ctest vm_keeld_ublk"

start_keeld
expect_ok "malloc bdev" keelctl bdev create malloc m0 16M

expect_fail "start without the driver" "modprobe ublk_drv" keelctl export start m0 --ublk 1
expect_fail "start without the driver (rpc)" "modprobe ublk_drv" \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","ublk_id":1}'
expect_ok "nothing half-created" keelctl --json rpc ublk_get_disks
[ "$OUT" = "[]" ] || fail "devices left after failed starts: $OUT"
expect_fail "target without the driver" "modprobe ublk_drv" keelctl rpc ublk_create_target
expect_fail "destroy without a target" "no ublk target" keelctl rpc ublk_destroy_target
expect_fail "missing bdev" "bdev 'nope' not found" \
	keelctl rpc ublk_start_disk '{"bdev_name":"nope","ublk_id":1}'
expect_fail "missing bdev_name" "missing parameter 'bdev_name'" \
	keelctl rpc ublk_start_disk '{"ublk_id":1}'
expect_fail "queue depth 0" "queue_depth 0" \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","queue_depth":0}'
expect_fail "queue depth too large" "queue_depth 5000: must be 1..1024" \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","queue_depth":5000}'
expect_fail "too many queues" "num_queues 9: must be 1.." \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","num_queues":9}'
expect_fail "no queues" "num_queues 0" \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","num_queues":0}'
expect_fail "id out of range" "ublk_id 1048576: must be 0..1048575" \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","ublk_id":1048576}'
expect_fail "negative id" "ublk_id -2" \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","ublk_id":-2}'
expect_fail "id of the wrong type" "ublk_id: expected an integer" \
	keelctl rpc ublk_start_disk '{"bdev_name":"m0","ublk_id":"one"}'
expect_fail "stop of an unknown device" "not served by this keeld" \
	keelctl rpc ublk_stop_disk '{"ublk_id":3}'
expect_fail "stop through keelctl" "not served by this keeld" keelctl export stop /dev/ublkb3
expect_fail "recover without the driver" "modprobe ublk_drv" \
	keelctl rpc ublk_recover_disk '{"bdev_name":"m0","ublk_id":4}'
expect_fail "recover of a missing bdev" "not found" \
	keelctl rpc ublk_recover_disk '{"bdev_name":"nope","ublk_id":4}'
expect_fail "bad cpumask" "cpumask 'zz'" keelctl rpc ublk_create_target '{"cpumask":"zz"}'
expect_fail "get of an unknown device" "not served by this keeld" \
	keelctl rpc ublk_get_disks '{"ublk_id":9}'
expect_usage "ublk with a socket" "--ublk takes only" \
	keelctl export start m0 --ublk 1 --socket /tmp/x
expect_usage "queues without ublk" "are for --ublk" keelctl export start m0 --nbd --queues 2

expect_ok "export list shows no device" keelctl export list
expect_ok "the bdev is free again (claimed by nothing)" keelctl bdev delete m0
keeld_alive || fail "keeld died"
stop_keeld
ok "ublk errors are clear and leave nothing behind"
