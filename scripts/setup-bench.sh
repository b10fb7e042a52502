#!/usr/bin/env bash
# Adds what `python -m bench rd` needs to .venv (made by scripts/setup.sh): the `bench` extra from PyPI,
# and libjxl's butteraugli_main from Debian's libjxl-devtools when apt can install it (root); without
# it the benchmark runs and reports butteraugli as missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup.sh
.venv/bin/python -m pip install -q -e '.[bench]'
if ! command -v butteraugli_main >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjxl-devtools >/dev/null
    else
        echo "setup-bench: butteraugli_main is missing; install Debian's libjxl-devtools for the butteraugli column" >&2
    fi
fi
