# The JSON-RPC protocol engine, fed without sockets or reactors (fuzz_rpc.c).
keel_add_fuzzer(rpc keel_daemon)
target_include_directories(fuzz_rpc PRIVATE ${CMAKE_SOURCE_DIR}/daemon)
