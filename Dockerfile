# The agent's image. It cannot be built on the development machines (no Docker engine there); build it with
#   docker build -t ghcr.io/numa-topology-exporter/numa-topology-exporter:0.1.0 .
# Runtime needs: Python 3.11, the package and its wheels. NVML comes from the host through the NVIDIA
# container runtime (the chart's gpu.enabled), udev names only when run on the host itself.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libudev1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Root without capabilities: the kubelet's state files are 0600 root (see the chart's values.yaml).
# The chart drops every capability, forbids privilege escalation and mounts the root filesystem read-only.
USER 0:0
EXPOSE 9709
ENTRYPOINT ["numa-topology-exporter"]
CMD ["serve"]
