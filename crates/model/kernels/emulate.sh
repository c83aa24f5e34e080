#!/usr/bin/env bash
# Runs fused_attention.cu's kernels on the CPU through emulate.cpp (see its header).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -v -e "^#include <cuda" -e "^#include <mma.h>" "$here/fused_attention.cu" > "$work/kernel_body.cu"
g++ -O2 -std=c++20 -pthread -I"$work" "$here/emulate.cpp" -o "$work/emulate"
"$work/emulate"
