#!/bin/sh
# Build-time check that onnxruntime-node's CUDA execution provider can load in this image.
#
#   check-cuda-provider.sh /app/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so
#
# Every shared library the provider links must resolve here, except the driver's libcuda.so.1,
# which the NVIDIA container toolkit (or Cloud Run) mounts at run time. A provider built for
# CUDA 13 on a CUDA 12 base (or the reverse) shows up as "libcudart.so.13 => not found" and fails
# the build with the CUDA major on both sides, instead of a silent CPU fallback in production.
# The image's forward-compatibility libcuda (/usr/local/cuda/compat), when present, is used for the
# check so that symbol versions are checked too (ldd -r). No GPU is needed.
set -eu

so="${1:?usage: check-cuda-provider.sh PATH/TO/libonnxruntime_providers_cuda.so}"
if [ ! -f "$so" ]; then
  echo "check-cuda-provider: $so is missing: onnxruntime-node's CUDA download did not run (ONNXRUNTIME_NODE_INSTALL=cuda12)" >&2
  exit 1
fi

# At run time onnxruntime loads libonnxruntime_providers_shared.so from the same folder first.
LD_LIBRARY_PATH="$(dirname "$so")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
compat="${CUDA_COMPAT_DIR:-/usr/local/cuda/compat}"
if [ -e "$compat/libcuda.so.1" ]; then
  LD_LIBRARY_PATH="$compat:$LD_LIBRARY_PATH"
fi
export LD_LIBRARY_PATH

report="$(ldd -r "$so" 2>&1 || true)"

# Major version of the CUDA runtime the provider links, from its NEEDED entry (libcudart.so.N).
linked_major="$(printf '%s\n' "$report" | sed -n 's/^[[:space:]]*libcudart\.so\.\([0-9][0-9]*\).*/\1/p' | head -n 1)"
image_major="${CUDA_VERSION:+${CUDA_VERSION%%.*}}"

missing="$(printf '%s\n' "$report" | grep 'not found' | grep -v '^[[:space:]]*libcuda\.so\.1 ' || true)"
driver_missing="$(printf '%s\n' "$report" | grep '^[[:space:]]*libcuda\.so\.1 .*not found' || true)"
if [ -n "$driver_missing" ]; then
  # Without libcuda the driver API symbols (cuXxx) stay undefined: expected at build time.
  undefined="$(printf '%s\n' "$report" | grep 'undefined symbol' | grep -v 'undefined symbol: cu[A-Z]' || true)"
else
  undefined="$(printf '%s\n' "$report" | grep 'undefined symbol' || true)"
fi

if [ -n "$linked_major" ] && [ -n "$image_major" ] && [ "$linked_major" != "$image_major" ]; then
  echo "check-cuda-provider: the provider links CUDA $linked_major (libcudart.so.$linked_major) but this image has CUDA ${CUDA_VERSION}." >&2
  echo "check-cuda-provider: use a CUDA $linked_major base image (build arg CUDA_IMAGE), or an onnxruntime-node whose CUDA package is built for CUDA $image_major." >&2
  exit 1
fi
if [ -n "$missing" ] || [ -n "$undefined" ]; then
  echo "check-cuda-provider: $so cannot load in this image:" >&2
  [ -n "$missing" ] && printf '%s\n' "$missing" >&2
  [ -n "$undefined" ] && printf '%s\n' "$undefined" | head -n 20 >&2
  exit 1
fi

# cuDNN is opened by the provider when a model needs it, so it may not be a NEEDED entry: look for
# the cuDNN 9 the provider is built against in the loader cache.
if ! ldconfig -p | grep -q 'libcudnn\.so\.9'; then
  echo "check-cuda-provider: libcudnn.so.9 is not in this image; onnxruntime's CUDA provider needs cuDNN 9 (use a *-cudnn-runtime-* base)." >&2
  exit 1
fi

echo "check-cuda-provider: OK, provider links CUDA ${linked_major:-?}; image CUDA ${CUDA_VERSION:-unknown}"
printf '%s\n' "$report" | grep -E 'libcudart|libcublas|libcudnn|libcurand|libcufft' || true
