#!/usr/bin/env bash
# Set up edge on a fresh machine: a virtual environment in .venv with the pinned dependencies,
# the real text data (Jane Austen's novels from Debian's r-cran-janeaustenr) in the data cache, the
# aarch64 executorch wheel that the native runner's cross build links against, and (as root, or with
# passwordless sudo) Debian's cross compiler, qemu-user, the adb client and OpenSSH's sshd (the tests'
# loopback board) for the profiler's targets,
# and aapt with android-framework-res (and a JDK where javac is missing) for android_demo's checks.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "edge needs Python 3.11"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.edge-setup
want=$(sha256sum pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/pip install -q --disable-pip-version-check -e '.[export,litert,plot,dev]'
  echo "$want" > "$stamp"
fi
if ! .venv/bin/edge data --fashion >/dev/null 2>&1; then
  # apt-get download needs package lists; refresh them once if we may
  if [ "$(id -u)" = 0 ]; then apt-get update -qq; else sudo -n apt-get update -qq || true; fi
  .venv/bin/edge data --fashion
fi
tools="g++-aarch64-linux-gnu qemu-user-static adb aapt android-framework-res openssh-server"
command -v javac >/dev/null || tools="$tools openjdk-17-jdk-headless"
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64-static >/dev/null || ! command -v adb >/dev/null \
   || ! command -v aapt >/dev/null || [ ! -f /usr/share/android-framework-res/framework-res.apk ] || ! command -v javac >/dev/null \
   || [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  if [ "$sudo" = none ]; then
    echo "setup: cannot install $tools (not root, no passwordless sudo); the aarch64, ssh, adb and Android resource tests will be skipped" >&2
  else
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $tools >/dev/null
  fi
fi
.venv/bin/python -c 'from profiler.native import fetch_wheel, get_arch; fetch_wheel(get_arch("aarch64"))'
echo "edge is set up: .venv/bin/edge --help" >&2
