#!/usr/bin/env bash
# The peers run as measured for docs/RESULTS.md: short locked invocations (each well under 25
# minutes of CPU on 2 shared cores), then one combine that prints the table and writes
# benchmarks/results/peers.json and docs/img/peers.png. Run from the repository root with
# homer's venv active, after benchmarks/peers/setup.sh. Sized to this 2-core machine's time:
# 2k-token contexts, one budget (87.5% evicted), 3 items per task; the driver takes larger
# sizes as they are (--length 4000 --items 20 --budgets 0.5 0.875 0.9375, --length 16000).
set -euo pipefail
LOCK=/tmp/homer-heavy.lock
RUN="python -m benchmarks.peers --length 2000 --budgets 0.875"
METHODS="plain homer snapkv expected_attention streaming_llm rerotated_expected_attention"
flock $LOCK $RUN --items 3 --methods $METHODS --tasks niah_single niah_multikey --name peers_2k_a
flock $LOCK $RUN --items 3 --methods $METHODS --tasks niah_multivalue niah_multiquery --name peers_2k_b
flock $LOCK $RUN --items 3 --methods $METHODS --tasks vt cwe --name peers_2k_c
flock $LOCK $RUN --items 3 --methods $METHODS --tasks fwe --name peers_2k_d
# The plain model through homer's code (one chunk, no pruning) on item 0 of every task: the
# check that both sides read the same prompt the same way.
flock $LOCK $RUN --items 1 --methods plain-homer --name peers_2k_plain_homer
python -m benchmarks.peers --combine peers_2k_a peers_2k_b peers_2k_c peers_2k_d \
  peers_2k_plain_homer --name peers
