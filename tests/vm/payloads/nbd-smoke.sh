#!/bin/sh
# Guest payload of ctest vm_nbd_smoke: keel-nbd-smoke does every step and prints its own
# KEEL-VM-FAIL line on failure; init prints the final marker from the exit code.
echo "nbd devices: $(ls -d /sys/block/nbd* | wc -l)"
exec keel-nbd-smoke
