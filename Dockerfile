# syntax=docker/dockerfile:1.7
#
# warmkv container images. Two runtime targets:
#
#   docker build --platform linux/amd64 -t warmkv:cuda .                # default: NVIDIA GPU (CUDA 12 + cuDNN 9)
#   docker build --platform linux/amd64 --target cpu -t warmkv:cpu .    # CPU only, no CUDA libraries
#
# Why these bases (details and sources in docs/deploy.md, "Image"):
# - onnxruntime-node is pinned at 1.26.0, the last release whose CUDA execution provider (NuGet
#   package Microsoft.ML.OnnxRuntime.Gpu.Linux 1.26.0, fetched by ONNXRUNTIME_NODE_INSTALL=cuda12)
#   links CUDA 12 (libcudart.so.12) and cuDNN 9. From 1.27 on the NuGet build links CUDA 13, which
#   needs an R580+ driver; Cloud Run's L4 runs R535 (CUDA 12.2), where a CUDA 12.x build runs through
#   CUDA minor-version compatibility. So the GPU base is a CUDA 12 + cuDNN 9 runtime image.
#   infra/docker/check-cuda-provider.sh fails this build if the provider and the base image ever
#   disagree (e.g. someone bumps onnxruntime-node to a CUDA 13 build).
# - Node: 24 LTS (Node 20 is end-of-life). The binary comes from the official node image, pinned
#   by tag, so the GPU and CPU images run the very same node build, with no apt repository or
#   signing key to trust at build time.

ARG NODE_IMAGE=node:24.18.0-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# build: compile src/ (TypeScript) to dist/ (JavaScript). Needs the dev dependencies (tsc).
FROM ${NODE_IMAGE} AS build
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY infra/docker/tsconfig.image.json infra/docker/
COPY src ./src
RUN npx tsc -p infra/docker/tsconfig.image.json

# ---------------------------------------------------------------------------------------------
# deps-cpu: production dependencies only. The CUDA download is skipped (as in CI and .npmrc).
FROM ${NODE_IMAGE} AS deps-cpu
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/onnxruntime-node/bin/napi-v6/darwin node_modules/onnxruntime-node/bin/napi-v6/win32 \
 && npm cache clean --force

# ---------------------------------------------------------------------------------------------
# deps-cuda: production dependencies plus the CUDA execution provider from NuGet (~240 MB).
# The environment variable wins over .npmrc's onnxruntime-node-install=skip (script/install-utils.js
# reads ONNXRUNTIME_NODE_INSTALL first). npm 11 warns about dependency install scripts that
# package.json does not list in allowScripts, and a strict npm skips them: --allow-scripts names
# this one, and if the provider still is not there the installer is run directly.
FROM ${NODE_IMAGE} AS deps-cuda
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=cuda12
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund --allow-scripts=onnxruntime-node \
 && ort=node_modules/onnxruntime-node \
 && bin="$ort/bin/napi-v6/linux/x64" \
 && { test -f "$bin/libonnxruntime_providers_cuda.so" || node "$ort/script/install.js"; } \
 && test -f "$bin/libonnxruntime_providers_cuda.so" \
 && test -f "$bin/libonnxruntime_providers_shared.so" \
 && rm -f "$bin/libonnxruntime_providers_tensorrt.so" \
 && rm -rf "$ort/bin/napi-v6/darwin" "$ort/bin/napi-v6/win32" "$ort/bin/napi-v6/linux/arm64" \
 && npm cache clean --force

# ---------------------------------------------------------------------------------------------
# node: where the runtime stages take the node binary from.
FROM ${NODE_IMAGE} AS node

# ---------------------------------------------------------------------------------------------
# cpu: CPU-only runtime on the official Node image.
FROM ${NODE_IMAGE} AS cpu
RUN groupadd --system --gid 10001 warmkv \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin warmkv \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/warmkv /var/lib/warmkv/snapshots
WORKDIR /app
COPY --from=deps-cpu /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY models/warmkv-chat ./models/warmkv-chat
COPY infra/docker/healthcheck.mjs ./infra/docker/healthcheck.mjs
ENV NODE_ENV=production \
    PORT=8080 \
    HOST=0.0.0.0 \
    MODEL_DIR=/app/models/warmkv-chat \
    SNAPSHOT_DIR=/var/lib/warmkv/snapshots \
    EXECUTION_PROVIDER=cpu \
    EXECUTION_PROVIDER_FALLBACK=false
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "/app/infra/docker/healthcheck.mjs"]
ENTRYPOINT ["node", "--max-semi-space-size=64", "/app/dist/main.js"]

# ---------------------------------------------------------------------------------------------
# cuda (default target): NVIDIA CUDA 12 + cuDNN 9 runtime, Ubuntu 24.04.
FROM ${CUDA_IMAGE} AS cuda
# libvulkan1: the Vulkan loader that onnxruntime-node's WebGPU provider (Dawn) opens at run time,
# for EXECUTION_PROVIDER=webgpu. The NVIDIA Vulkan driver itself is injected by the container
# toolkit when NVIDIA_DRIVER_CAPABILITIES includes "graphics".
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvulkan1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 warmkv \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin warmkv \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/warmkv /var/lib/warmkv/snapshots
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=deps-cuda /app/node_modules ./node_modules
COPY --chmod=0755 infra/docker/check-cuda-provider.sh /usr/local/bin/warmkv-check-cuda-provider
# Fails the build when a library the CUDA provider links is missing from this image
# (wrong CUDA major, no cuDNN 9, ...). No GPU is needed for this check.
RUN warmkv-check-cuda-provider /app/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY models/warmkv-chat ./models/warmkv-chat
COPY infra/docker/healthcheck.mjs ./infra/docker/healthcheck.mjs
ENV NODE_ENV=production \
    PORT=8080 \
    HOST=0.0.0.0 \
    MODEL_DIR=/app/models/warmkv-chat \
    SNAPSHOT_DIR=/var/lib/warmkv/snapshots \
    EXECUTION_PROVIDER=cuda \
    EXECUTION_PROVIDER_FALLBACK=true \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "/app/infra/docker/healthcheck.mjs"]
ENTRYPOINT ["node", "--max-semi-space-size=64", "/app/dist/main.js"]
