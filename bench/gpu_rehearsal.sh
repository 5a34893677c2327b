#!/usr/bin/env bash
# GPU rehearsal (bench/gpu_rehearsal.py): one recipe on a ~1B-parameter twin, on one GPU:
# train (bf16, sdpa; QLoRA when bitsandbytes is importable), merge, evaluate; prints tokens/s
# and peak GPU memory. Without a GPU it says so and exits 0.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="$here/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false
exec "$py" "$here/bench/gpu_rehearsal.py" "$@"
