#!/usr/bin/env bash
# The peers run as measured for docs/RESULTS.md: short locked invocations (each under 25 minutes
# on 2 shared cores), then one combine that prints the table and writes
# benchmarks/results/peers.json and docs/img/peers.png. Run from the repository root with
# homer's venv active, after benchmarks/peers/setup.sh; `run_all.sh b c` runs only those steps.
# Sized to this machine's time: 2k-token contexts, one budget (87.5% evicted), 3 items per task
# for the single and multi-key needles, 2 for the other five tasks. The driver takes the sizes as they
# are (--length 4000 --items 20 --budgets 0.5 0.875 0.9375; --length 16000 --items 10).
set -euo pipefail
LOCK=/tmp/homer-heavy.lock
RUN="python -m benchmarks.peers --length 2000 --budgets 0.875"
METHODS="plain homer snapkv expected_attention streaming_llm rerotated_expected_attention"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(a b c combine)
for step in "${STEPS[@]}"; do
  case $step in
    a) flock $LOCK $RUN --items 3 --methods $METHODS --tasks niah_single niah_multikey \
         --name peers_2k_a ;;
    # the other five tasks in one locked call of about 25 minutes, the plain model through
    # homer's code (one chunk, no pruning) beside kvpress's plain: both read the same token ids
    b) flock $LOCK $RUN --items 2 --methods plain-homer $METHODS \
         --tasks niah_multivalue --name peers_2k_b ;;
    # the other four tasks, with Knorm
    c) flock $LOCK $RUN --items 2 --methods plain homer snapkv expected_attention streaming_llm \
         knorm rerotated_expected_attention --tasks niah_multiquery vt cwe fwe --name peers_2k_c ;;
    combine) python -m benchmarks.peers --combine \
         $(for n in peers_2k_a peers_2k_b peers_2k_c; do
             [ -f benchmarks/results/$n.json ] && echo $n; done) --name peers ;;
  esac
done
