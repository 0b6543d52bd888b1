#!/usr/bin/env bash
# The peers run as measured for docs/RESULTS.md: one locked invocation per task (7-12
# minutes each on 2 quiet cores), then one combine that prints the table and writes
# benchmarks/results/peers.json and docs/img/peers.png. Run from the repository root with
# homer's venv active, after benchmarks/peers/setup.sh; `run_all.sh vt cwe combine` runs only
# those steps.
# Sized to this machine's time: 2k-token contexts, one budget (87.5% evicted) for every method,
# 20 items per needle task and 10 for variable tracking and the word extractions (the session
# ran out of time for 20: `ITEMS_REST=20 run_all.sh vt cwe fwe`); then the 50% budget for HOMER
# and three presses on the single and multi-key needles; then 10 single-needle items past the
# window (16k). The driver takes the other sizes as they are (--length 4000 --budgets 0.5
# 0.875 0.9375; --length 16000 --items 10).
set -euo pipefail
LOCK=/tmp/homer-heavy.lock
ITEMS_REST=${ITEMS_REST:-10}
RUN="python -m benchmarks.peers --length 2000 --items 20"
REST="python -m benchmarks.peers --length 2000 --items $ITEMS_REST"
METHODS="plain homer snapkv expected_attention streaming_llm rerotated_expected_attention"
NEEDLES="niah_single niah_multikey niah_multivalue niah_multiquery"
TASKS="$NEEDLES vt cwe fwe"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=($TASKS half past combine)
for step in "${STEPS[@]}"; do
  case $step in
    half) flock $LOCK $RUN --budgets 0.5 --methods homer snapkv expected_attention \
            streaming_llm --tasks niah_single niah_multikey --name peers_2k20_half ;;
    past) flock $LOCK python -m benchmarks.peers --length 16000 --items 10 --tasks niah_single \
            --methods plain homer snapkv expected_attention streaming_llm --views head \
            --name peers_16k_niah_single ;;
    combine) python -m benchmarks.peers --combine \
         $(for n in $NEEDLES half; do echo peers_2k20_$n; done) \
         $(for n in vt cwe fwe; do echo peers_2k${ITEMS_REST}_$n; done) \
         peers_16k_niah_single --name peers ;;
    vt|cwe|fwe) flock $LOCK $REST --budgets 0.875 --methods $METHODS --tasks "$step" \
         --name "peers_2k${ITEMS_REST}_$step" ;;
    *) flock $LOCK $RUN --budgets 0.875 --methods $METHODS --tasks "$step" \
         --name "peers_2k20_$step" ;;
  esac
done
