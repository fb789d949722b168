# The NBD connection state machine over a socketpair, with a RAM disk (fuzz_nbd.c).
keel_add_fuzzer(nbd keel_nbd keel_bdev keel_reactor)
