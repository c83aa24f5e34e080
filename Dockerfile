# syntax=docker/dockerfile:1
# rewarddance images (BuildKit).
#
#   docker build -t rewarddance:cuda .                       # default: CUDA 13.0, sm_90 (H100/H200)
#   docker build --build-arg CUDA_COMPUTE_CAP=80 -t rewarddance:cuda-a100 .
#   docker build --target cpu -t rewarddance:cpu .           # CPU only, Debian slim
#
#   docker run --gpus all -p 50051:50051 -p 9090:9090 -v /models:/models:ro \
#       -e REWARDDANCE_MODEL=/models/InternVL2_5-1B rewarddance:cuda
#
# The binary serves the bundled tiny RANDOM-weight model when REWARDDANCE_MODEL is unset (it is
# compiled in: see Checkpoint::bundled). Every flag has a REWARDDANCE_* variable
# (crates/server/src/config.rs, crates/cli/src/model_args.rs); deploy/tests/test_dockerfile.py
# checks the ports, variables, user and health check below against the code.
# GPU hosts need the NVIDIA container toolkit and a driver for CUDA 13.0 (>= 580).
#
# Every download is pinned and checked against its sha256 (rustup-init, grpc_health_probe); crates
# are checked by cargo against Cargo.lock. The dependencies build in a layer of their own
# (cargo-chef: a "recipe" of the manifests and Cargo.lock), so a change to the sources rebuilds
# only the workspace crates; a layer, unlike a cache mount, is also kept by CI's layer caches.

ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04
ARG DEBIAN=bookworm
ARG RUST_VERSION=1.95.0
# rustup-init for the CUDA build stage, pinned by version and by the sha256 published next to it
# (static.rust-lang.org/rustup/archive/<version>/x86_64-unknown-linux-gnu/rustup-init.sha256).
ARG RUSTUP_VERSION=1.28.2
ARG RUSTUP_INIT_SHA256=20a06e644b0d9bd2fbdbfd52d42540bdde820ea7df86e92e533c073da0cdd43c
# cargo-chef, from crates.io (`cargo install --locked`: its own Cargo.lock, crates checked by cargo).
ARG CARGO_CHEF_VERSION=0.1.77
# grpc_health_probe for HEALTHCHECK (grpc.health.v1): a static Go binary, pinned by version and
# sha256 of the linux-amd64 release asset.
ARG GRPC_HEALTH_PROBE_VERSION=v0.4.37
ARG GRPC_HEALTH_PROBE_SHA256=8302d54fc41d4ffbfea6871b6a04584265d5eabbe738aee2966f9a574b6f17d1

# --- grpc_health_probe, checked against its pinned checksum --------------------------------------
FROM debian:${DEBIAN}-slim AS probe
ARG GRPC_HEALTH_PROBE_VERSION
ARG GRPC_HEALTH_PROBE_SHA256
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && curl -fsSL -o /grpc_health_probe \
       "https://github.com/grpc-ecosystem/grpc-health-probe/releases/download/${GRPC_HEALTH_PROBE_VERSION}/grpc_health_probe-linux-amd64" \
    && echo "${GRPC_HEALTH_PROBE_SHA256}  /grpc_health_probe" | sha256sum -c - \
    && chmod 0755 /grpc_health_probe

# --- cargo-chef and the recipe: the manifests + Cargo.lock, which change less than the sources ----
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install --locked --version "${CARGO_CHEF_VERSION}" cargo-chef
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- CUDA build ----------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS cuda-build
ARG RUST_VERSION
ARG RUSTUP_VERSION
ARG RUSTUP_INIT_SHA256
# Compute capability candle's kernels are compiled for (90 = Hopper: H100/H200).
ARG CUDA_COMPUTE_CAP=90
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:$PATH \
    CUDA_ROOT=/usr/local/cuda CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN curl --proto '=https' --tlsv1.2 -fsSL -o /tmp/rustup-init \
       "https://static.rust-lang.org/rustup/archive/${RUSTUP_VERSION}/x86_64-unknown-linux-gnu/rustup-init" \
    && echo "${RUSTUP_INIT_SHA256}  /tmp/rustup-init" | sha256sum -c - \
    && chmod 0755 /tmp/rustup-init \
    && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
    && rm /tmp/rustup-init
COPY --from=chef /usr/local/cargo/bin/cargo-chef /opt/cargo/bin/cargo-chef
WORKDIR /src
# Dependencies only (the layer is reused until a manifest or Cargo.lock changes), with the same
# profile, features and package as the build below, or that build would compile them again.
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --features cuda -p rewarddance-cli --recipe-path recipe.json
# nvcc is on PATH in the devel image; libcuda is linked against the toolkit's stub and comes from
# the host driver at run time.
COPY . .
RUN cargo build --release --locked --features cuda -p rewarddance-cli \
    && install -D -m 0755 target/release/rewarddance /out/rewarddance

# --- CPU build -----------------------------------------------------------------------------------
FROM chef AS cpu-build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release -p rewarddance-cli --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p rewarddance-cli \
    && install -D -m 0755 target/release/rewarddance /out/rewarddance

# --- CPU runtime (`--target cpu`) ----------------------------------------------------------------
FROM debian:${DEBIAN}-slim AS cpu
RUN groupadd --system --gid 10001 rewarddance \
    && useradd --system --uid 10001 --gid rewarddance --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rewarddance
COPY --from=probe /grpc_health_probe /usr/local/bin/grpc_health_probe
COPY --from=cpu-build /out/rewarddance /usr/local/bin/rewarddance
# The parity fixtures (~6 MB): `rewarddance parity --fixtures /opt/rewarddance/fixtures`.
COPY fixtures /opt/rewarddance/fixtures
ENV REWARDDANCE_ADDR=0.0.0.0:50051 \
    REWARDDANCE_METRICS_ADDR=0.0.0.0:9090 \
    REWARDDANCE_DEVICE=cpu \
    REWARDDANCE_LOG_FORMAT=json
EXPOSE 50051 9090
USER 10001:10001
# SERVING only once the model is loaded and ran a warm-up forward: give big models time. The
# port follows REWARDDANCE_ADDR; with TLS on (REWARDDANCE_TLS_CERT) the probe speaks TLS.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/bin/sh", "-c", "exec grpc_health_probe -addr=127.0.0.1:${REWARDDANCE_ADDR##*:} -service=rewarddance.v1.RewardService -connect-timeout=2s -rpc-timeout=3s ${REWARDDANCE_TLS_CERT:+-tls -tls-no-verify}"]
ENTRYPOINT ["rewarddance"]
CMD ["serve"]

# --- CUDA runtime (default target) ---------------------------------------------------------------
# The `runtime` variant carries cudart, cuBLAS/cuBLASLt, cuRAND and NVRTC, which the binary links
# dynamically (`base` has only cudart); libcuda comes from the host driver.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS cuda
RUN groupadd --system --gid 10001 rewarddance \
    && useradd --system --uid 10001 --gid rewarddance --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rewarddance
COPY --from=probe /grpc_health_probe /usr/local/bin/grpc_health_probe
COPY --from=cuda-build /out/rewarddance /usr/local/bin/rewarddance
COPY fixtures /opt/rewarddance/fixtures
ENV REWARDDANCE_ADDR=0.0.0.0:50051 \
    REWARDDANCE_METRICS_ADDR=0.0.0.0:9090 \
    REWARDDANCE_DEVICE=cuda:0 \
    REWARDDANCE_LOG_FORMAT=json \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 50051 9090
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/bin/sh", "-c", "exec grpc_health_probe -addr=127.0.0.1:${REWARDDANCE_ADDR##*:} -service=rewarddance.v1.RewardService -connect-timeout=2s -rpc-timeout=3s ${REWARDDANCE_TLS_CERT:+-tls -tls-no-verify}"]
ENTRYPOINT ["rewarddance"]
CMD ["serve"]
