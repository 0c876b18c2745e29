# ArrowQuant server image: `arrowquant serve` (Arrow Flight SQL on 50051, HTTP jobs API and
# Prometheus /metrics on 8000).
#
#   docker build -t arrowquant:0.1.0 .                      # the server image (the last stage)
#   docker build --target wheel --output type=local,dest=dist .   # only the Python wheel, into dist/
#
# See deploy/README.md for running it and for what was checked.

# The workspace's rust-version (Cargo.toml) is 1.94, and so is the highest rust-version among
# the locked dependencies (DataFusion 55.2); scripts/check_deploy.sh checks both.
ARG RUST_VERSION=1.94

# ---- builder: the release binary ------------------------------------------------------------
# Nothing beyond the Rust image is needed: no protoc (arrow-flight ships its generated code),
# no cmake (aws-lc-sys, pulled in by datafusion-cli's object stores, builds with cc), and gcc
# for mimalloc, zstd and liblzma is in the image.
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin arrowquant \
    && install -m 0755 target/release/arrowquant /usr/local/bin/arrowquant

# ---- wheel-builder: the Python package (arrow_quant_v2) -------------------------------------
# A stage of its own on top of the builder, so the server image does not wait for it (BuildKit
# builds only the stages the target needs) and the wheel can be exported on its own.
FROM builder AS wheel-builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin \
    && /opt/maturin/bin/pip install --no-cache-dir "maturin>=1.9,<2"
RUN /opt/maturin/bin/maturin build --release --locked --manifest-path python/Cargo.toml --out /dist

FROM scratch AS wheel
COPY --from=wheel-builder /dist/ /

# ---- runtime ---------------------------------------------------------------------------------
# No Python here: the server is the Rust binary alone (it links only libc, libm and libgcc_s),
# and Python with pyarrow and datafusion would add a few hundred MB the server never uses. The
# Python API is for clients; they install the wheel (stage `wheel`) where they run.
FROM debian:bookworm-slim AS runtime
# curl is for the HEALTHCHECK only (arrowquant has no HTTP client). Debian versions are not
# pinned: bookworm's security updates replace them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 arrowquant \
    && useradd --system --uid 10001 --gid arrowquant --home-dir /models --no-create-home \
       --shell /usr/sbin/nologin arrowquant \
    && mkdir -p /models /run/secrets \
    && chown arrowquant:arrowquant /models
COPY --from=builder /usr/local/bin/arrowquant /usr/local/bin/arrowquant
USER 10001:10001
WORKDIR /models
EXPOSE 8000 50051
# /healthz needs no token. The server stops gracefully on SIGTERM (the jobs cancelled, their
# partial outputs removed), exit code 0; it handles the signal itself, also as PID 1.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "4", "http://127.0.0.1:8000/healthz"]
# Listening on 0.0.0.0 is allowed only with a token: mount one at /run/secrets/arrowquant-token
# (a Docker or Kubernetes secret; at least 16 printable ASCII bytes). More flags (--memory-limit,
# --max-jobs, ...) can follow as the container's command.
ENTRYPOINT ["arrowquant", "serve", "--http", "0.0.0.0:8000", "--flight", "0.0.0.0:50051", "--root", "/models", "--auth-token-file", "/run/secrets/arrowquant-token"]
