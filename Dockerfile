# slim: slimd (gRPC fine-tuning service), slimctl and the slim-train worker on Debian 12.
#
#   docker build -t slim .
#   docker run -d --name slimd -p 127.0.0.1:50051:50051 -p 127.0.0.1:9464:9464 \
#     -v slim-data:/var/lib/slim slim --devices cpu:8GiB
#   docker stop -t 120 slimd        # give workers time to checkpoint (see docs/operations.md)
#
# Arguments after the image name are appended to slimd's flags (the last one of a flag wins).
# Debian's LibTorch is CPU-only: this image trains on the CPU. docs/operations.md describes the
# CUDA variant.

# ---- build: compile with Debian's packages --------------------------------------------------
FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
# Exactly the build_packages of scripts/install-deps.sh (scripts/validate-deploy.sh compares
# them), without its test_packages, which this image never runs. Gloo's headers are among them:
# without them the build quietly leaves data parallelism out.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libtorch-dev libopenblas0-pthread libgloo-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev \
      libsqlite3-dev libpqxx-dev prometheus-cpp-dev libssl-dev libmicrohttpd-dev libcrypt-dev \
      libpcre2-dev libicu-dev libsentencepiece-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN SLIM_JOBS=2 SLIM_SKIP_DEPS=1 ./scripts/build.sh -DSLIM_BUILD_TESTS=OFF \
 && strip build/server/slimd build/client/slimctl build/tools/slim-train build/base/slim_sentencepiece.so

# ---- runtime: the shared libraries the three binaries load, nothing else ----------------------
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
# The packages of the libraries the three binaries name (readelf -d: NEEDED): LibTorch (it
# pulls its own dependencies), gRPC (with reflection), protobuf, Abseil, SQLite, libpqxx and
# libpq (the PostgreSQL store), prometheus-cpp's core, GNU libmicrohttpd (the /metrics and
# status page server; it pulls GnuTLS), OpenSSL's libcrypto (SHA-256; gRPC needs it too),
# libcrypt (bcrypt passwords), PCRE2 and SentencePiece (tokenizers; SentencePiece through the
# module copied below); plus OpenBLAS, LibTorch's BLAS (without it Debian falls back to
# the 7x slower reference one).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-pthread \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libsqlite3-0 libpqxx-6.4 libpq5 libprometheus-cpp-core1.0 libmicrohttpd12 libssl3 libcrypt1 \
      libpcre2-8-0 libicu72 libsentencepiece0 \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it and volumes can be
# prepared for it (deploy/kubernetes/statefulset.yaml uses 10001 too).
RUN groupadd --system --gid 10001 slim \
 && useradd --system --uid 10001 --gid slim --home-dir /var/lib/slim --no-create-home \
      --shell /usr/sbin/nologin slim \
 && install -d -o slim -g slim -m 0750 /var/lib/slim

# slimd finds its worker next to itself (/usr/local/bin/slim-train).
COPY --from=build /src/build/server/slimd /src/build/client/slimctl /src/build/tools/slim-train \
     /usr/local/bin/
# SentencePiece tokenizers: slim-train opens this module at run time (base/sentencepiece_module.h
# says why it is not linked), from ../lib/slim/ beside its binary.
COPY --from=build /src/build/base/slim_sentencepiece.so /usr/local/lib/slim/slim_sentencepiece.so
COPY models/base-mini.safetensors /usr/local/share/slim/models/base-mini.safetensors

# slimd points its workers at the calibrations in the data directory itself (SLIM_CACHE_DIR);
# HOME only gives other tools a writable home.
ENV HOME=/var/lib/slim

# Created and chowned above, before VOLUME: a new named volume starts as a copy of it.
VOLUME /var/lib/slim
WORKDIR /var/lib/slim
USER 10001:10001

# 50051: gRPC (slim.v1.Slim, grpc.health.v1.Health, reflection); 9464: /metrics and the status page.
EXPOSE 50051 9464

# Docker has no gRPC health check and Debian has no grpc_health_probe: `slimctl health` asks
# grpc.health.v1 (no token needed) and exits 0 only when slimd is SERVING (6 otherwise).
# Kubernetes probes use grpc.health.v1 directly.
# Listening on 0.0.0.0, slimd requires --tokens-file (docs/security.md): mount one and append
# `--tokens-file /etc/slim/tokens.yaml` (compose and Kubernetes in deploy/ do).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/slimctl","health","--server","127.0.0.1:50051","--timeout","3"]

# SIGTERM: slimd stops accepting jobs, workers checkpoint (up to --cancel-grace, 30 s) and their
# jobs are requeued for the next start. Stop with a longer timeout than Docker's 10 s default.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/slimd","--listen","0.0.0.0:50051","--metrics-address","0.0.0.0:9464","--data-dir","/var/lib/slim"]
CMD []
