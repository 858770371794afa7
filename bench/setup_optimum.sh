#!/usr/bin/env bash
# The peer tool that bench/peer_optimum.py compares edge's ExecuTorch export with: `optimum-cli export
# executorch` (optimum-executorch 1.1.0), in its own environment .venv-optimum. It cannot live in edge's
# .venv: optimum-executorch 1.1.0 pins optimum~=2.0.0 and transformers==5.0.0rc1 (edge: optimum 2.3.0,
# whose own optimum-cli has no executorch exporter, and transformers 5.24). About 1.5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv-optimum/bin/python ] || "$PY" -m venv .venv-optimum
# torch first and pinned, as in setup.sh (an unpinned torch pulls a multi-GB CUDA build)
.venv-optimum/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv-optimum/bin/pip install -q --disable-pip-version-check torch==2.13.0 executorch==1.5.1 optimum-executorch==1.1.0
echo "optimum-cli is set up: .venv-optimum/bin/optimum-cli" >&2
