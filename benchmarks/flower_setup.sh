#!/usr/bin/env bash
# Creates benchmarks/.venv-flower, a virtual environment apart from the project's own: Flower's
# pins conflict with ours. Idempotent: the installs are skipped once the stamp file exists
# (benchmarks/.venv-flower/.installed, holding the pins below).
#
#   bash benchmarks/flower_setup.sh
#   benchmarks/.venv-flower/bin/python benchmarks/flower_digits.py
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv-flower"
STAMP="$VENV/.installed"
PYTHON="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0"
FLWR_PIN="flwr[simulation]==1.41.0"
# Only for the digits CSV it ships: flower_digits.py reads the file, as DistLM does, and never
# imports scikit-learn.
SKLEARN_PIN="scikit-learn==1.9.1"
NUMPY_PIN="numpy==2.4.6"

# Keep the environment out of git.
IGNORE_LINE="benchmarks/.venv-flower/"
if ! grep -qxF "$IGNORE_LINE" "$ROOT/.gitignore" 2>/dev/null; then
    # Start on a new line if the file does not end with one.
    if [ -s "$ROOT/.gitignore" ] && [ -n "$(tail -c1 "$ROOT/.gitignore")" ]; then
        echo >>"$ROOT/.gitignore"
    fi
    echo "$IGNORE_LINE" >>"$ROOT/.gitignore"
fi

# The stamp holds the pins it was made with, so changing a pin above reinstalls.
PINS="$TORCH_PIN $FLWR_PIN $SKLEARN_PIN $NUMPY_PIN"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ]; then
    echo "flower venv ready: $VENV"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
# torch first, pinned, so that pip takes the local CPU wheel and never the CUDA build.
"${PIP[@]}" "$TORCH_PIN"
"${PIP[@]}" "$TORCH_PIN" "$FLWR_PIN" "$SKLEARN_PIN" "$NUMPY_PIN"

"$VENV/bin/python" -c "import flwr, ray, sklearn, torch; print('flwr', flwr.__version__, \
'ray', ray.__version__, 'torch', torch.__version__)"
echo "$PINS" >"$STAMP"
echo "flower venv ready: $VENV"
