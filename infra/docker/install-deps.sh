#!/bin/sh
# Installs warmkv's npm dependencies in the current folder (the image's /app, or a CI scratch copy).
#
#   install-deps.sh build   all dependencies, to compile (tsc is a dev dependency)
#   install-deps.sh cpu     production dependencies only
#   install-deps.sh cuda    production dependencies plus onnxruntime-node's CUDA execution provider
#
# Only flags that npm 10 and npm 11 read the same way: `npm ci --omit=dev --ignore-scripts`. No
# dependency install script runs (.npmrc says so too); the one warmkv needs, onnxruntime-node's
# CUDA download from NuGet, is run here by name, so it does not depend on npm's script policy
# (npm 11's allowScripts, npm 10's run-everything).
#
# CUDA_PROVIDER_NUPKG=/path/to/Microsoft.ML.OnnxRuntime.Gpu.Linux.nupkg takes the provider from a
# local package instead of downloading it (CI uses this with a stand-in package, so the checks that
# follow the download run without network).
set -eu

mode="${1:-}"
case "$mode" in
  build) omit="" ;;
  cpu | cuda) omit="--omit=dev" ;;
  *)
    echo "usage: install-deps.sh build|cpu|cuda" >&2
    exit 2
    ;;
esac

# shellcheck disable=SC2086 # $omit is one flag or none
npm ci $omit --ignore-scripts --no-audit --no-fund

ort=node_modules/onnxruntime-node
bin="$ort/bin/napi-v6/linux/x64"

if [ "$mode" = cuda ]; then
  if [ -n "${CUDA_PROVIDER_NUPKG:-}" ]; then
    node "$(dirname "$0")/extract-cuda-provider.cjs" "$CUDA_PROVIDER_NUPKG"
  else
    ONNXRUNTIME_NODE_INSTALL=cuda12 node "$ort/script/install.js"
  fi
  for library in libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so; do
    if [ ! -s "$bin/$library" ]; then
      echo "install-deps: $bin/$library is missing after the CUDA provider download" >&2
      exit 1
    fi
  done
  # TensorRT is not used (EXECUTION_PROVIDER has no tensorrt) and is the largest file.
  rm -f "$bin/libonnxruntime_providers_tensorrt.so"
fi

# The images run on linux/x64 only: drop the other platforms' bundled binaries.
if [ "$mode" != build ]; then
  rm -rf "$ort/bin/napi-v6/darwin" "$ort/bin/napi-v6/win32" "$ort/bin/napi-v6/linux/arm64"
fi
echo "install-deps: $mode dependencies installed"
