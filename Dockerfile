# The lifeboat image: the one binary on a small non-root runtime image.
#   docker build -t registry.example.com/lifeboat:0.1.0 .
# The Kubernetes manifests (deploy/kubernetes/) run it as UID/GID 65532,
# the runtime image's `nonroot` user, with the role as the arguments:
#   docker run --rm registry.example.com/lifeboat:0.1.0 check -c /etc/lifeboat/config/edge.toml

FROM rust:1.85-bookworm AS build
WORKDIR /src
# Cargo.toml names the benches: the manifest does not load without them.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin lifeboat

# glibc and CA-free: lifeboat trusts only the CA its config pins.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/lifeboat /usr/local/bin/lifeboat
COPY LICENSE /usr/share/doc/lifeboat/LICENSE
COPY README.md /usr/share/doc/lifeboat/README.md
COPY docs/runbook.md /usr/share/doc/lifeboat/runbook.md
USER 65532:65532
# QUIC and TLS (the pods listen on 8443, the Service maps 443), admin.
EXPOSE 8443/udp 8443/tcp 9443/tcp
ENTRYPOINT ["/usr/local/bin/lifeboat"]
CMD ["--help"]
