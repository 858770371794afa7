#!/usr/bin/env bash
# The peer tools that bench/peer_optimum.py compares edge's exports with, each in its own environment
# (their pins conflict with edge's .venv and with each other):
#   .venv-optimum       `optimum-cli export executorch`: optimum-executorch 1.1.0 pins optimum~=2.0.0 and
#                       transformers==5.0.0rc1 (edge: optimum 2.3.0, whose own optimum-cli has no
#                       executorch exporter, and transformers 5.24);
#   .venv-optimum-onnx  `optimum-cli export onnx` and `optimum-cli onnxruntime optimize`: optimum-onnx 0.1.0
#                       pins optimum~=2.1.0 and transformers<4.58.
# About 2 minutes. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
pip=(-q --disable-pip-version-check)
for pair in ".venv-optimum:executorch==1.5.1 optimum-executorch==1.1.0" \
            ".venv-optimum-onnx:onnxruntime==1.31.1 optimum-onnx[onnxruntime]==0.1.0"; do
  venv=${pair%%:*}
  read -r -a pkgs <<< "${pair#*:}"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  # torch first and pinned, as in setup.sh (an unpinned torch pulls a multi-GB CUDA build)
  "$venv/bin/pip" install "${pip[@]}" torch==2.13.0
  "$venv/bin/pip" install "${pip[@]}" torch==2.13.0 "${pkgs[@]}"
done
echo "optimum-cli is set up: .venv-optimum/bin/optimum-cli (ExecuTorch), .venv-optimum-onnx/bin/optimum-cli (ONNX)" >&2
