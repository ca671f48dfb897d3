#!/usr/bin/env bash
# The replication simulation's seeded scenarios, many seeds: agents joining in the order and
# at the moments a seed picks, some killed as they join, on simulated time (one thread,
# time jumping to the next timer). CI plays 200 seeds; this plays SEEDS (5,000), every
# tenth twice to check that a seed replays its run, and prints how long it took.
#
#   bench/sim.sh
#   SEEDS=20000 bench/sim.sh
#   SIM_SEED=1234 cargo test -p tandem-agent --lib seeded_join   # replay one seed
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-5000}
cargo test -p tandem-agent --lib --no-run --quiet
start=$(date +%s.%N)
SIM_SEEDS=$seeds cargo test -p tandem-agent --lib --quiet seeded_join -- --exact \
    replication::sim::agents_pair_in_every_seeded_join_order_on_simulated_time
end=$(date +%s.%N)
awk -v n="$seeds" -v s="$start" -v e="$end" \
    'BEGIN { printf "%d seeds (%d replayed) in %.1f s\n", n, int((n + 9) / 10), e - s }'
