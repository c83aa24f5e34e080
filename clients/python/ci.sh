#!/usr/bin/env bash
# CI for the Python client (called by .ci/run): a fresh venv, the package with its test extras,
# the server binary, then pytest against both the in-process fake and the real server.
#
#   clients/python/ci.sh                      # builds target/debug/rewarddance with cargo first
#   REWARDDANCE_BIN=/path/to/rewarddance clients/python/ci.sh
#
# Env: VENV (default clients/python/.venv-ci), PYTHON (default python3),
# REWARDDANCE_REQUIRE_SERVER (default 1: a binary without `serve` fails the run instead of
# skipping the real-server tests). torch is not installed here (too large): its tests skip.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$HERE/.venv-ci}"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

echo "== python client: venv ($VENV)"
"$PYTHON" --version
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e "$HERE[test]"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(grpcio|grpcio-tools|protobuf|numpy|pillow|pytest) '

if [[ -z "${REWARDDANCE_BIN:-}" ]]; then
    echo "== python client: cargo build -p rewarddance-cli"
    (cd "$REPO" && cargo build -p rewarddance-cli --locked)
    export REWARDDANCE_BIN="$REPO/target/debug/rewarddance"
fi
export REWARDDANCE_REQUIRE_SERVER="${REWARDDANCE_REQUIRE_SERVER:-1}"

echo "== python client: pytest (server: $REWARDDANCE_BIN)"
cd "$HERE"
"$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider tests
