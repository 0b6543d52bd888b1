#!/usr/bin/env bash
# The full peers run, as measured for docs/RESULTS.md: several locked invocations (each well
# under 25 minutes of CPU on 2 cores), then one combine that prints the table and writes
# benchmarks/results/peers.json and docs/img/peers.png. Run from the repository root with
# homer's venv active, after benchmarks/peers/setup.sh.
set -euo pipefail
LOCK=/tmp/homer-heavy.lock
RUN="python -m benchmarks.peers"
ALL="plain plain-homer homer snapkv expected_attention streaming_llm knorm rerotated_expected_attention"
# Inside the window: 4k-token contexts, 87.5% of the context evicted.
flock $LOCK $RUN --length 4000 --items 3 --budgets 0.875 --methods $ALL \
  --tasks niah_single niah_multikey niah_multivalue niah_multiquery --name peers_4k_niah
flock $LOCK $RUN --length 4000 --items 3 --budgets 0.875 --methods $ALL \
  --tasks vt cwe fwe --name peers_4k_other
# Past the window: 16k-token documents; kvpress's methods read the window-sized head.
flock $LOCK $RUN --length 16000 --items 3 --views head \
  --methods plain homer snapkv expected_attention rerotated_expected_attention \
  --tasks niah_single niah_multikey vt --name peers_16k
$RUN --combine peers_4k_niah peers_4k_other peers_16k --name peers
