# shellcheck shell=bash
# Shell helpers shared by the benchmark scripts in tests/bench (sourced, not run).

# median: the median of the numbers on stdin, one per line (the mean of the middle two
# for an even count); fails on empty input.
median() {
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1
		print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# loadavg: the 1, 5 and 15 minute load averages, for the record of a run.
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
