#!/usr/bin/env bash
# The peers run as measured for docs/RESULTS.md: one locked invocation per step (7-25 minutes
# each on 2 quiet cores, about 4.5 hours in all), then one combine that prints the table and
# writes benchmarks/results/peers.json and docs/img/peers.png. Run from the repository root with
# homer's venv active, after benchmarks/peers/setup.sh; `run_all.sh vt half_cwe combine` runs
# only those steps.
# Sized to this machine's time: 2k-token contexts, 20 items per task at two budgets (87.5% of
# the context evicted, every method; 50%, HOMER and three presses; the plain model through
# homer's code as well as kvpress's), then 10 items past the window (16k: single needle,
# frequent words, multi-value; 32k: single needle). Variable tracking and the word extractions
# at 87.5% were measured in two runs of 10 items (items are seeded by their index, so the
# halves pool into the same 20 items one run would read). The driver takes
# the other sizes as they are (--length 4000 --budgets 0.9375, --methods kvzip).
set -euo pipefail
LOCK=/tmp/homer-heavy.lock
PEERS="python -m benchmarks.peers"
METHODS="plain homer snapkv expected_attention streaming_llm rerotated_expected_attention"
HALF="homer snapkv expected_attention streaming_llm"
RUN="$PEERS --length 2000 --items 20"
TEN="$PEERS --length 2000 --items 10 --budgets 0.875 --methods $METHODS"
PAST="$PEERS --items 10 --methods plain homer snapkv expected_attention streaming_llm --views head"
NEEDLES="niah_single niah_multikey niah_multivalue niah_multiquery"
REST="vt cwe fwe"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=($NEEDLES $REST half half_niah_multivalue half_niah_multiquery \
  half_vt half_cwe half_fwe plain_homer past_niah_single past_fwe past_niah_multivalue past32 combine)
for step in "${STEPS[@]}"; do
  case $step in
    half) flock $LOCK $RUN --budgets 0.5 --methods $HALF --tasks niah_single niah_multikey \
            --name peers_2k20_half ;;
    half_*) flock $LOCK $RUN --budgets 0.5 --methods $HALF --tasks "${step#half_}" \
              --name "peers_2k20_$step" ;;
    plain_homer) flock $LOCK $RUN --budgets 0.875 --methods plain-homer --tasks $NEEDLES $REST \
                   --name peers_2k20_plain_homer ;;
    past_*) flock $LOCK $PAST --length 16000 --tasks "${step#past_}" \
              --name "peers_16k_${step#past_}" ;;
    past32) flock $LOCK $PAST --length 32000 --tasks niah_single --name peers_32k_niah_single ;;
    combine) $PEERS --combine \
         $(for n in $NEEDLES half half_niah_multivalue half_niah_multiquery; do
             echo peers_2k20_$n; done) peers_2k20_plain_homer \
         $(for n in $REST; do echo peers_2k10_$n peers_2k10b_$n peers_2k20_half_$n; done) \
         peers_16k_niah_single peers_16k_fwe peers_16k_niah_multivalue peers_32k_niah_single \
         --name peers ;;
    vt|cwe|fwe)
      flock $LOCK $TEN --tasks "$step" --name "peers_2k10_$step"
      flock $LOCK $TEN --start 10 --tasks "$step" --name "peers_2k10b_$step" ;;
    *) flock $LOCK $RUN --budgets 0.875 --methods $METHODS --tasks "$step" \
         --name "peers_2k20_$step" ;;
  esac
done
