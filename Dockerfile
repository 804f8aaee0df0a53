# The agent's image, for people with a Docker engine or podman:
#   docker build -t ghcr.io/numa-topology-exporter/numa-topology-exporter:0.1.0 .
# It builds the same thing as `make image` (image/build.sh, no engine needed): Debian bookworm with
# python3-venv and libudev1, the project in a venv at /opt/nte, entrypoint numa-topology-exporter serve.
# NVML comes from the host through the NVIDIA container runtime (the chart's gpu.enabled).
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN python3 -m venv /build && /build/bin/pip install --no-cache-dir --quiet wheel \
    && /build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv libudev1 \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/nte \
    && /opt/nte/bin/pip install --no-cache-dir --quiet /wheels/*.whl \
    && /opt/nte/bin/pip uninstall --quiet --yes pip setuptools || true \
    && rm -rf /wheels
ENV PATH=/opt/nte/bin:/usr/bin:/bin
# Root without capabilities: the kubelet's state files are 0600 root (see the chart's values.yaml).
# The chart drops every capability, forbids privilege escalation and mounts the root filesystem read-only.
USER 0:0
EXPOSE 9709
ENTRYPOINT ["/opt/nte/bin/numa-topology-exporter"]
CMD ["serve"]
