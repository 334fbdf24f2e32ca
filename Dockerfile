# syntax=docker/dockerfile:1
# gridfn's image: the release binary and the sample handlers on distroless
# (glibc and libgcc, CA certificates, no shell), run as a non-root user.
#   docker build -t gridfn .
#   docker run -p 7071:7071 -e GRIDFN_KEY=secret gridfn
# Kubernetes mounts its own gridfn.toml over /etc/gridfn (deploy/); health is
# checked by its probes on /healthz and /readyz, so there is no HEALTHCHECK.

# The two base images, as build arguments so that a machine without a
# registry can build on local equivalents (tests/packaging/image does).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- build: gridfn (release) and the sample handlers (wasm32-wasip2) --------
# The toolchain the workspace pins (rust-version 1.95), on the Debian release
# the runtime stage is built from, so the binary's glibc matches.
FROM ${RUST_IMAGE} AS builder
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds (BuildKit,
# Podman/Buildah); the results are copied out of them into /out. No debug
# info in the image's binary: the release profile's line tables (and the C
# dependencies' DWARF) are ~180 MB of its 212 MB; panics still name functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=false
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gridfn --bin gridfn \
 && cargo build --release --locked --target wasm32-wasip2 -p audit-log -p moderation-router \
 && mkdir -p /out/bin /out/handlers /out/state \
 && cp target/release/gridfn /out/bin/ \
 && cp target/wasm32-wasip2/release/audit_log.wasm target/wasm32-wasip2/release/moderation_router.wasm /out/handlers/

# --- run ---------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /out/bin/gridfn /usr/local/bin/gridfn
COPY --from=builder /out/handlers/ /opt/gridfn/handlers/
# A one-host manifest for `docker run`; Kubernetes mounts deploy/configmap.yaml's.
COPY deploy/image/gridfn.toml /etc/gridfn/gridfn.toml
# Dedup records, kv, dead letters and the compile cache (a volume in production).
COPY --from=builder --chown=65532:65532 /out/state /var/lib/gridfn
# distroless's "nonroot" user.
USER 65532:65532
EXPOSE 7071
ENTRYPOINT ["/usr/local/bin/gridfn", "serve", "--config", "/etc/gridfn/gridfn.toml"]
