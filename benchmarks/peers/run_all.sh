#!/usr/bin/env bash
# The peers run as measured for docs/RESULTS.md: one locked invocation per task (about 15
# minutes each on 2 quiet cores), then one combine that prints the table and writes
# benchmarks/results/peers.json and docs/img/peers.png. Run from the repository root with
# homer's venv active, after benchmarks/peers/setup.sh; `run_all.sh vt cwe combine` runs only
# those steps.
# Sized to this machine's time: 2k-token contexts, 20 items per task at one budget (87.5%
# evicted) for every method; then the 50% budget for HOMER and three presses on the single
# and multi-key needles. The driver takes the other sizes as they are (--length 4000 --budgets 0.5
# 0.875 0.9375; --length 16000 --items 10).
set -euo pipefail
LOCK=/tmp/homer-heavy.lock
RUN="python -m benchmarks.peers --length 2000 --items 20"
METHODS="plain homer snapkv expected_attention streaming_llm rerotated_expected_attention"
TASKS="niah_single niah_multikey niah_multivalue niah_multiquery vt cwe fwe"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=($TASKS half combine)
for step in "${STEPS[@]}"; do
  case $step in
    half) flock $LOCK $RUN --budgets 0.5 --methods homer snapkv expected_attention \
            streaming_llm --tasks niah_single niah_multikey --name peers_2k20_half ;;
    combine) python -m benchmarks.peers --combine \
         $(for n in $TASKS half; do
             [ -f benchmarks/results/peers_2k20_$n.json ] && echo peers_2k20_$n; done) \
         --name peers ;;
    *) flock $LOCK $RUN --budgets 0.875 --methods $METHODS --tasks "$step" \
         --name "peers_2k20_$step" ;;
  esac
done
