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

# Every install and build step is a script under infra/docker/ that CI (.ci/run) also runs: the
# CPU path whole, the CUDA path with its download taken from a local stand-in package. They use
# only npm flags that npm 10 and 11 read alike; npm's cache lives in a BuildKit cache mount, so it
# never lands in a layer.

# ---------------------------------------------------------------------------------------------
# build: compile src/ (TypeScript) to dist/ (JavaScript). Needs the dev dependencies (tsc).
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY infra/docker/install-deps.sh infra/docker/build.sh infra/docker/
RUN --mount=type=cache,target=/root/.npm sh infra/docker/install-deps.sh build
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN sh infra/docker/build.sh

# ---------------------------------------------------------------------------------------------
# deps-cpu: production dependencies only, no CUDA download.
FROM ${NODE_IMAGE} AS deps-cpu
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY infra/docker/install-deps.sh infra/docker/
RUN --mount=type=cache,target=/root/.npm sh infra/docker/install-deps.sh cpu

# ---------------------------------------------------------------------------------------------
# deps-cuda: production dependencies plus the CUDA execution provider from NuGet (~240 MB), which
# install-deps.sh fetches by running onnxruntime-node's installer with ONNXRUNTIME_NODE_INSTALL=cuda12.
FROM ${NODE_IMAGE} AS deps-cuda
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY infra/docker/install-deps.sh infra/docker/extract-cuda-provider.cjs infra/docker/
RUN --mount=type=cache,target=/root/.npm sh infra/docker/install-deps.sh cuda

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
# The playground's static files, served from the folder beside dist/ (PLAYGROUND=false turns it off).
COPY playground ./playground
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
ENTRYPOINT ["node", "--max-semi-space-size=64", "--initial-old-space-size=128", "/app/dist/main.js"]

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
# The playground's static files, served from the folder beside dist/ (PLAYGROUND=false turns it off).
COPY playground ./playground
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
ENTRYPOINT ["node", "--max-semi-space-size=64", "--initial-old-space-size=128", "/app/dist/main.js"]
