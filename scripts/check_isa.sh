#!/usr/bin/env bash
# The native kernels on every instruction set: builds test/native/isa_check.c with native/*.c
# (not the addon) and runs it here (AVX-512, AVX2, scalar on x86-64). With an aarch64 cross
# compiler and qemu-user (Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# qemu-user) it also runs it for arm64 (NEON, scalar) under emulation, and links the whole addon
# for arm64 to check that nothing but Node-API and libc is left undefined. Exit status non-zero
# on any failure; the arm64 part is skipped, with a line saying so, when the tools are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=(native/pool.c native/gemm.c native/conv.c native/conv_direct.c native/kernels.c native/dw_avx512.c)
FLAGS=(-std=gnu11 -O3 -fno-math-errno -pthread -Wall -Werror -Wno-unused-function -Inative)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cc "${FLAGS[@]}" test/native/isa_check.c "${SRC[@]}" -lm -o "$OUT/isa_check"
"$OUT/isa_check" | grep -v '^ok' || true
"$OUT/isa_check" > /dev/null
if command -v aarch64-linux-gnu-gcc > /dev/null && command -v qemu-aarch64 > /dev/null; then
  aarch64-linux-gnu-gcc "${FLAGS[@]}" test/native/isa_check.c "${SRC[@]}" -lm -o "$OUT/isa_check_arm64"
  echo "arm64 (qemu-aarch64):"
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$OUT/isa_check_arm64" | grep -v '^ok' || true
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$OUT/isa_check_arm64" > /dev/null
  NODE_INC=$(dirname "$(find /usr/include /usr/local/include "$HOME/.cache/node-gyp" -name node_api.h 2> /dev/null | head -1)")
  if [ -n "$NODE_INC" ] && [ "$NODE_INC" != "." ]; then
    aarch64-linux-gnu-gcc "${FLAGS[@]}" -fPIC -shared -DNAPI_VERSION=8 -I"$NODE_INC" native/addon.c "${SRC[@]}" -lm \
      -o "$OUT/convnets_native_arm64.node"
    undefined=$(aarch64-linux-gnu-nm -u "$OUT/convnets_native_arm64.node" | awk '$1 == "U" {print $2}' |
      grep -v '^napi_' | grep -v '@GLIBC' || true)
    if [ -n "$undefined" ]; then
      echo "arm64 addon: undefined symbols besides Node-API and libc: $undefined" >&2
      exit 1
    fi
    echo "arm64 addon links (only Node-API and libc symbols undefined)"
  else
    echo "arm64 addon link check skipped: node_api.h not found"
  fi
else
  echo "arm64 check skipped: aarch64-linux-gnu-gcc and qemu-aarch64 not installed"
fi
