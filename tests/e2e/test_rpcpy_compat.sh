#!/usr/bin/env bash
# SPDK's scripts/rpc.py works against keeld: for every method keel shares with SPDK,
# the exact request rpc.py sends (tests/e2e/rpcpy/requests.jsonl, with the SPDK sources
# the parameter sets come from) succeeds and the reply has SPDK's shape; an SPDK
# parameter at a value keel cannot honour is refused with -32602 and a message that
# names it; an unknown parameter is still refused. No SPDK code is needed: the requests
# are sent the way rpc.py sends them (indented JSON on a unix socket).
. "$(dirname "$0")/lib.sh"

FIXTURES=$E2E_DIR/rpcpy/requests.jsonl
[ -r "$FIXTURES" ] || fail "no $FIXTURES"

start_keeld
truncate -s 16M "$E2E_TMP/aio0" "$E2E_TMP/aio1"

# Requests on stdin (one JSON object a line) are sent one at a time on one connection,
# each as rpc.py sends it (json.dumps with indent=2, no delimiter); each reply is read
# the way rpc.py reads it (one JSON value) and printed on a line of its own.
cat >"$E2E_TMP/rpcpy_client.py" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
s.connect(sys.argv[1])
dec = json.JSONDecoder()
buf = ""
for line in sys.stdin:
    if not line.strip():
        continue
    s.sendall(json.dumps(json.loads(line), indent=2).encode())
    while True:
        rest = buf.lstrip()
        try:
            reply, end = dec.raw_decode(rest)
            buf = rest[end:]
            break
        except ValueError:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("keeld closed the connection; unanswered: " + line.strip())
            buf += chunk.decode()
    print(json.dumps(reply), flush=True)
PY
send_as_rpcpy() {
	"$PY" "$E2E_TMP/rpcpy_client.py" "$SOCK"
}

# The jq condition a successful reply to request $req must meet (SPDK's result shape).
BDEV_SHAPE='(.name|type) == "string" and (.aliases|type) == "array" and
	(.product_name|type) == "string" and (.block_size|type) == "number" and
	(.num_blocks|type) == "number" and
	(.uuid|test("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")) and
	(.claimed|type) == "boolean" and .zoned == false and
	(.assigned_rate_limits|keys) ==
		["r_mbytes_per_sec", "rw_ios_per_sec", "rw_mbytes_per_sec", "w_mbytes_per_sec"] and
	.supported_io_types.read == true and .supported_io_types.write == true and
	(.driver_specific|type) == "object"'
IOSTAT_FIELDS='"name", "bytes_read", "num_read_ops", "bytes_written", "num_write_ops",
	"bytes_unmapped", "num_unmap_ops", "read_latency_ticks", "max_read_latency_ticks",
	"write_latency_ticks", "max_write_latency_ticks", "unmap_latency_ticks",
	"max_unmap_latency_ticks", "bytes_copied", "num_copy_ops"'
shape_of() {
	case $1 in
	rpc_get_methods)
		echo '(.result|type) == "array" and all(.result[]; type == "string") and
			any(.result[]; . == "bdev_malloc_create") and
			any(.result[]; . == "nbd_start_disk")' ;;
	bdev_malloc_create)
		echo '(.result|type) == "string" and
			.result == ($req.params.name // "Malloc0")' ;;
	bdev_null_create | bdev_aio_create)
		echo '.result == $req.params.name' ;;
	bdev_error_create)
		echo '.result == "EE_" + $req.params.base_name' ;;
	bdev_error_inject_error | bdev_*_delete | nbd_stop_disk)
		echo '.result == true' ;;
	bdev_get_bdevs)
		echo "(.result|type) == \"array\" and (.result|length) >= 1 and
			all(.result[]; $BDEV_SHAPE) and
			if \$req.params.name == null then (.result|length) >= 6 else
			(.result|length) == 1 and .result[0].name == \$req.params.name and
			.result[0].block_size == 512 and .result[0].num_blocks == 131072 and
			.result[0].claimed == true and
			.result[0].claim_type == \"exclusive_write\" end" ;;
	bdev_get_iostat)
		echo "(.result.tick_rate|type) == \"number\" and (.result.ticks|type) == \"number\" and
			(.result.bdevs|length) >= 1 and
			all(.result.bdevs[]; . as \$b | all($IOSTAT_FIELDS; . as \$k | \$b | has(\$k))) and
			[.result.bdevs[].name] == (\$req.params.names // if \$req.params.name then
				[\$req.params.name] else [.result.bdevs[].name] end)" ;;
	framework_get_reactors)
		echo '(.result.tick_rate|type) == "number" and (.result.reactors|length) >= 1 and
			all(.result.reactors[]; (.lcore|type) == "number" and
				(.busy|type) == "number" and (.idle|type) == "number" and
				(.irq|type) == "number" and (.sys|type) == "number" and
				(.usr|type) == "number" and (.in_interrupt|type) == "boolean" and
				(.lw_threads|length) >= 1 and
				all(.lw_threads[]; (.name|type) == "string" and (.id|type) == "number" and
					(.cpumask|test("^[0-9a-f]+$")) and (.elapsed|type) == "number")) and
			.result.reactors[0].usr + .result.reactors[0].sys > 0' ;;
	thread_get_stats)
		echo '(.result.tick_rate|type) == "number" and (.result.threads|length) >= 1 and
			all(.result.threads[]; (.name|type) == "string" and (.id|type) == "number" and
				(.cpumask|test("^[0-9a-f]+$")) and (.busy|type) == "number" and
				(.idle|type) == "number" and (.active_pollers_count|type) == "number" and
				(.timed_pollers_count|type) == "number" and
				(.paused_pollers_count|type) == "number")' ;;
	nbd_get_disks)
		echo '(.result|type) == "array"' ;;
	nbd_start_disk)
		echo '.result == $req.params.nbd_device' ;;
	*) echo false ;;
	esac
}

# check_replies REQUESTS REPLIES: every reply is a JSON-RPC 2.0 answer to id 1 that
# meets its method's shape. nbd_start_disk/nbd_stop_disk need the kernel's nbd driver:
# without it, an error that is not about the parameters (-32602) is what is checked.
check_replies() {
	local reqs=$1 replies=$2 req reply method

	[ "$(echo "$reqs" | wc -l)" -eq "$(echo "$replies" | wc -l)" ] ||
		fail "$(echo "$replies" | wc -l) replies to $(echo "$reqs" | wc -l) requests"
	while IFS= read -r req <&3 && IFS= read -r reply <&4; do
		method=$(jq -r .method <<<"$req")
		jq -e '.jsonrpc == "2.0" and .id == 1' <<<"$reply" >/dev/null ||
			fail "$method: not a JSON-RPC 2.0 reply to id 1: $reply"
		case $method in
		nbd_start_disk | nbd_stop_disk)
			if jq -e '.error != null' <<<"$reply" >/dev/null; then
				jq -e '.error.code != -32602' <<<"$reply" >/dev/null ||
					fail "$method: parameters refused: $reply"
				ok "$method: parameters accepted (no kernel nbd here:" \
					"$(jq -r .error.message <<<"$reply" | cut -c1-60))"
				continue
			fi
			;;
		esac
		jq -e '.error == null' <<<"$reply" >/dev/null ||
			fail "$method: rpc.py's request failed: $req -> $reply"
		jq -e --argjson req "$req" "$(shape_of "$method")" <<<"$reply" >/dev/null ||
			fail "$method: reply lacks SPDK's shape: $req -> $(cut -c1-600 <<<"$reply")"
		ok "$method $(jq -c '.params // {}' <<<"$req" | cut -c1-80)"
	done 3<<<"$reqs" 4<<<"$replies"
}

ALL=$(grep -v '^#' "$FIXTURES" | sed "s|@DIR@|$E2E_TMP|g" | jq -c .) || fail "fixture is not JSON"
# Everything up to the first delete, so the refusals below meet existing bdevs.
SETUP=$(jq -c 'select(.method | endswith("_delete") | not)' <<<"$ALL")
DELETES=$(jq -c 'select(.method | endswith("_delete"))' <<<"$ALL")

# --- 1. rpc.py's requests succeed and the replies have SPDK's shape ----------------------
REPLIES=$(send_as_rpcpy <<<"$SETUP") || fail "sending rpc.py's requests"
check_replies "$SETUP" "$REPLIES"

# --- 2. SPDK parameters keel cannot honour: -32602 naming the parameter ------------------
# method | jq edit of rpc.py's request | what the message must say
REFUSED='rpc_get_methods|.params.current = "yes"|current: expected true or false
bdev_malloc_create|.params.md_size = 8|md_size: metadata is not supported by keel
bdev_malloc_create|.params.md_interleave = true|md_interleave: metadata is not supported by keel
bdev_malloc_create|.params.physical_block_size = 4096|physical_block_size: keel bdevs have a single block size
bdev_malloc_create|.params.dif_type = 1|dif_type: protection information (DIF/DIX) is not supported by keel
bdev_null_create|.params.dif_is_head_of_md = true|dif_is_head_of_md: protection information
bdev_null_create|.params.preferred_write_alignment = 8|preferred_write_alignment: keel bdevs do not advertise
bdev_aio_create|.params.readonly = true|readonly: keel'"'"'s aio bdev opens its file for writing
bdev_aio_create|.params.uuid = "913fc008-79a7-447f-b2c4-c73543638c31"|uuid: keel gives a file bdev a random UUID
bdev_error_create|.params.uuid = "913fc008-79a7-447f-b2c4-c73543638c31"|uuid: keel gives an error bdev a random UUID
bdev_error_inject_error|.params.queue_depth = 4|queue_depth: keel'"'"'s error bdev does not trigger at a queue depth
bdev_error_inject_error|.params.corrupt_value = 7|corrupt_value: keel'"'"'s error bdev does not corrupt data
bdev_error_inject_error|.params.error_type = "corrupt_data"|error_type: '"'"'corrupt_data'"'"' (an SPDK error type) is not supported
bdev_get_bdevs|.params = {"name": "m0", "timeout": 3600001}|timeout: at most 3600000 ms
bdev_get_iostat|.params.per_channel = true|per_channel: keel reports each bdev'"'"'s statistics summed
bdev_get_iostat|.params.reset_mode = "all"|reset_mode: keel does not reset I/O statistics'
# Every method keel shares: a parameter SPDK does not know either is still refused.
for m in $(jq -r .method <<<"$ALL" | sort -u); do
	REFUSED+=$'\n'"$m|.params.colour = \"red\"|unknown parameter 'colour'"
done

REQS=
WANT=()
while IFS='|' read -r method edit want; do
	req=$(jq -c --arg m "$method" 'select(.method == $m)' <<<"$ALL" | head -n 1 | jq -c "$edit") ||
		fail "refusal case $method: bad edit $edit"
	REQS+=$req$'\n'
	WANT+=("$want")
done <<<"$REFUSED"
REPLIES=$(send_as_rpcpy <<<"$REQS") || fail "sending the refused requests"
i=0
while IFS= read -r reply; do
	method=$(jq -r '.method' <<<"$(sed -n "$((i + 1))p" <<<"$REQS")")
	jq -e --arg want "${WANT[$i]}" '.error.code == -32602 and (.error.message | contains($want))' \
		<<<"$reply" >/dev/null || fail "$method: want -32602 '${WANT[$i]}', got $reply"
	ok "$method refused: $(jq -r .error.message <<<"$reply" | cut -c1-90)"
	i=$((i + 1))
done <<<"$REPLIES"
[ "$i" -eq "${#WANT[@]}" ] || fail "$i replies to ${#WANT[@]} refused requests"

# --- 3. values at SPDK's default, or equal to what keel does, are honoured -----------------
ACCEPTED='{"jsonrpc": "2.0", "method": "bdev_malloc_create", "id": 1, "params": {"num_blocks": 64, "block_size": 512, "name": "pb", "physical_block_size": 512, "uuid": "913fc008-79a7-447f-b2c4-c73543638c31", "optimal_io_boundary": 0, "md_size": 0, "md_interleave": false, "dif_type": 0, "dif_is_head_of_md": false, "dif_pi_format": 0}}
{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 1, "params": {"name": "pb", "timeout": 1000}}
{"jsonrpc": "2.0", "method": "bdev_get_iostat", "id": 1, "params": {"name": "pb", "per_channel": false, "reset_mode": "none"}}
{"jsonrpc": "2.0", "method": "rpc_get_methods", "id": 1, "params": {"current": true, "include_aliases": true}}
{"jsonrpc": "2.0", "method": "bdev_malloc_delete", "id": 1, "params": {"name": "pb"}}'
REPLIES=$(send_as_rpcpy <<<"$ACCEPTED") || fail "sending the requests at defaults"
jq -se '(.[0].result == "pb") and (.[1].result[0].uuid == "913fc008-79a7-447f-b2c4-c73543638c31") and
	(.[2].result.bdevs[0].name == "pb") and (.[3].result|length) > 10 and (.[4].result == true)' \
	<<<"$REPLIES" >/dev/null || fail "requests at SPDK's defaults: $REPLIES"
ok "SPDK defaults, physical_block_size = block_size and uuid are honoured"

# --- 4. bdev_get_bdevs -b NAME -t MS waits for the bdev, as SPDK's does ------------------
# Wait (up to 60 s) until thread_get_stats meets the jq condition $1.
wait_poller() { # $1: jq condition on thread_get_stats
	for _ in $(seq 1 600); do
		keelctl rpc thread_get_stats | jq -e "$1" >/dev/null && return 0
		sleep 0.1
	done
	return 1
}
REPLIES=$(send_as_rpcpy <<<'{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 1, "params": {"name": "late", "timeout": 100}}') ||
	fail "bdev_get_bdevs with a timeout"
jq -e '.error.code == -19' <<<"$REPLIES" >/dev/null || fail "no bdev within 100 ms: want -19, got $REPLIES"
ok "bdev_get_bdevs -t 100 for a bdev that never comes: -19 once the time is up"
"$PY" "$E2E_TMP/rpcpy_client.py" "$SOCK" >"$E2E_TMP/late.out" 2>&1 \
	<<<'{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 1, "params": {"name": "late", "timeout": 60000}}' &
WAITER=$!
E2E_EXTRA_PIDS="${E2E_EXTRA_PIDS:-} $WAITER" # killed by the cleanup if we fail
wait_poller 'any(.threads[].pollers[]; .name == "bdev_get_bdevs_wait")' ||
	fail "the waiting bdev_get_bdevs never showed its poller"
keelctl rpc bdev_malloc_create '{"name": "late", "num_blocks": 64}' >/dev/null || fail "create late"
wait $WAITER || fail "waiting bdev_get_bdevs: $(cat "$E2E_TMP/late.out")"
jq -e '.result[0].name == "late"' "$E2E_TMP/late.out" >/dev/null ||
	fail "waiting bdev_get_bdevs: $(cat "$E2E_TMP/late.out")"
keelctl rpc thread_get_stats | jq -e 'all(.threads[].pollers[]; .name != "bdev_get_bdevs_wait")' \
	>/dev/null || fail "the wait poller outlived its request"
keelctl rpc bdev_malloc_delete '{"name": "late"}' >/dev/null || fail "delete late"
ok "bdev_get_bdevs -t waits for a bdev created meanwhile, and its poller goes"
# A client that gives up ends the wait: the poller goes with its connection.
"$PY" "$E2E_TMP/rpcpy_client.py" "$SOCK" >/dev/null 2>&1 \
	<<<'{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 1, "params": {"name": "never", "timeout": 3600000}}' &
WAITER=$!
E2E_EXTRA_PIDS="${E2E_EXTRA_PIDS:-} $WAITER" # killed by the cleanup if we fail
wait_poller 'any(.threads[].pollers[]; .name == "bdev_get_bdevs_wait")' ||
	fail "the second waiting bdev_get_bdevs never showed its poller"
kill "$WAITER"
wait "$WAITER" 2>/dev/null
wait_poller 'all(.threads[].pollers[]; .name != "bdev_get_bdevs_wait")' ||
	fail "the wait poller outlived its client"
ok "a client that goes away ends its bdev_get_bdevs wait"

# --- 5. the deletes, and nothing refused was created -------------------------------------
REPLIES=$(send_as_rpcpy <<<"$DELETES") || fail "sending rpc.py's deletes"
check_replies "$DELETES" "$REPLIES"
REPLIES=$(send_as_rpcpy <<<'{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 1}') ||
	fail "bdev_get_bdevs"
jq -e '.result == []' <<<"$REPLIES" >/dev/null || fail "bdevs left over: $REPLIES"
ok "every bdev deleted, none created by a refused request"

keeld_alive || fail "keeld died"
echo "PASS $E2E_NAME"
