# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run on a slim Debian with a non-root user.

FROM rust:1-bookworm AS build
# pingora-core builds zlib-ng with cmake; tikv-jemalloc-sys builds jemalloc with the image's
# cc and make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY config ./config
RUN cargo build --release --locked --bin realmgate \
 && strip target/release/realmgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin realmgate \
 && mkdir -p /etc/realmgate
COPY --from=build /src/target/release/realmgate /usr/local/bin/realmgate
COPY config/realmgate.example.yaml /etc/realmgate/realmgate.yaml
USER 10001
# 8080: proxy (clients), 9090: admin (/healthz, /readyz, /metrics; keep it private)
EXPOSE 8080 9090
ENV REALMGATE_PROXY_ADDR=0.0.0.0:8080 REALMGATE_ADMIN_ADDR=0.0.0.0:9090
ENTRYPOINT ["/usr/local/bin/realmgate"]
CMD ["run", "--config", "/etc/realmgate/realmgate.yaml"]
