# syntax=docker/dockerfile:1
#
# rollout-exporter container image.
#
#   docker build -t rollout-exporter:dev .
#   docker run --rm -p 127.0.0.1:9864:9864 rollout-exporter:dev demo --scenario healthy
#   docker run --rm -p 127.0.0.1:9864:9864 \
#       -v "$PWD/database-url:/run/secrets/database-url:ro" \
#       -e DATABASE_URL_FILE=/run/secrets/database-url -e ROLLOUT_ENVIRONMENT=staging \
#       rollout-exporter:dev serve
#
# Probes (all on the one HTTP port, 9864 by default, named `metrics` in deploy/kubernetes/):
#   liveness   GET /healthz  200 while the process runs.
#   readiness  GET /readyz   503 until the first full load from the database, then 200.
#   scrape     GET /metrics  Prometheus text format.
# The final image has no shell and no curl, so there is no HEALTHCHECK here: probe from the outside
# (kubelet httpGet, Prometheus `up`, or `curl -fsS http://127.0.0.1:9864/readyz` on the host).
#
# No Docker engine runs on the CI machine: tests/deploy/ checks this file statically (stages, USER,
# EXPOSE, no secret in ENV/ARG). Build it for real before publishing an image.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- build stage ------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# .dockerignore keeps the context to Cargo.toml, Cargo.lock, src/ (and tests/ etc. in case Cargo.toml
# names targets there), so this layer changes only with the code.
COPY . .
# --locked: build exactly Cargo.lock. The cache mounts keep the registry and compiled dependencies
# between builds (BuildKit, the default builder since Docker 23); the binary is copied out of the
# cached target dir because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/rollout-exporter /out/rollout-exporter

# ---- runtime stage ----------------------------------------------------------------------------
# distroless cc: glibc and libgcc only (TLS is rustls with built-in webpki roots, so no OpenSSL and
# no CA bundle are needed; a private CA goes in with sslrootcert=/path/in/a/mounted/secret).
FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="rollout-exporter" \
      org.opencontainers.image.description="Prometheus exporter: rollout metrics and a go/no-go gate from observability_events" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/rollout-exporter /usr/local/bin/rollout-exporter
# Numeric uid:gid (distroless "nonroot" = 65532) so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 9864
# The exporter drains and exits on SIGTERM (the default stop signal).
ENTRYPOINT ["/usr/local/bin/rollout-exporter"]
CMD ["serve"]
