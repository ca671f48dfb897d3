#!/usr/bin/env bash
# The replication simulation's seeded scenarios, many seeds, on simulated time (one thread,
# time jumping to the next timer): agents joining in the order and at the moments a seed
# picks, some killed as they join; a pair writing on both sides over multicast that
# loses, doubles and reorders datagrams while its link is cut and healed; and four to six
# agents with writers under overlapping kills, restarts, partitions, pauses and slow
# partners (the nemesis). CI plays 200 seeds of each; this plays SEEDS (5,000), every
# tenth twice with the agents' log captured, to check that a seed replays its run line
# for line, and prints how long it took.
#
#   bench/sim.sh
#   SEEDS=20000 bench/sim.sh
#   SIM_SEED=1234 cargo test -p tandem-agent --lib on_simulated_time   # replay one seed
#   SIM_LOG=1 SIM_SEED=1234 cargo test -p tandem-agent --lib nemesis   # ... and print its log
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-5000}
cargo test -p tandem-agent --lib --no-run --quiet
start=$(date +%s.%N)
SIM_SEEDS=$seeds cargo test -p tandem-agent --lib --quiet on_simulated_time
end=$(date +%s.%N)
awk -v n="$seeds" -v s="$start" -v e="$end" \
    'BEGIN { printf "%d seeds of each scenario (%d replayed) in %.1f s\n", n, int((n + 9) / 10), e - s }'
