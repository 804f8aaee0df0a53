#!/bin/bash
# The agent's image, built without a Docker engine, from Debian packages only (`make image`):
#   a Debian bookworm root filesystem made by mmdebstrap (variant essential: python3-venv and libudev1,
#   merged /usr, no docs, man pages or locales), the project installed into a venv at /opt/nte through
#   chroot, packed as an OCI image by umoci and exported as an OCI archive by skopeo.
# The Dockerfile builds the same thing (the same base, packages, venv and entrypoint) where an engine is.
#
#   image/build.sh [OUT]        OUT defaults to build/image; it gets:
#     OUT/oci                                       the OCI layout (image numa-topology-exporter:<version>)
#     OUT/numa-topology-exporter-<version>.oci.tar  the same as one archive, for skopeo or `podman load`
#
# Needs root (mmdebstrap's root mode, chroot) and PyPI and Debian mirrors. Push it elsewhere with
#   skopeo copy oci-archive:OUT/numa-topology-exporter-<version>.oci.tar docker://REGISTRY/numa-topology-exporter:<version>
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/build/image}" && cd "${1:-$ROOT/build/image}" && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
VERSION="$("$PYTHON" -c 'import exporter; print(exporter.__version__)')"
NAME=numa-topology-exporter
CA="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"

for tool in mmdebstrap umoci skopeo chroot; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (make system-deps installs it)" >&2; exit 1; }
done
WORK="$(mktemp -d "${TMPDIR:-/tmp}/nte-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"

mmdebstrap --quiet --variant=essential --include=python3-venv,libudev1 \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  bookworm "$ROOTFS" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 || { tail -20 "$WORK/mmdebstrap.log" >&2; exit 1; }

# The project as a wheel built here; its dependencies from PyPI, inside the chroot (the host's CA bundle
# and resolver only for the install, then removed).
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$ROOTFS/tmp/wheels" "$ROOT" 2>/dev/null
WHEEL="$(basename "$(ls "$ROOTFS"/tmp/wheels/*.whl)")"
cp "$CA" "$ROOTFS/tmp/ca.crt"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root /usr/bin/python3 -m venv /opt/nte
chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/tmp/ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
  /opt/nte/bin/pip install --quiet --no-cache-dir "/tmp/wheels/$WHEEL"
chroot "$ROOTFS" /opt/nte/bin/pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true
rm -rf "$ROOTFS"/tmp/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/root/.cache
: > "$ROOTFS/etc/resolv.conf"

rm -rf "$OUT/oci"
umoci init --layout "$OUT/oci"
umoci new --image "$OUT/oci:$NAME"
umoci config --image "$OUT/oci:$NAME" --tag "$VERSION" \
  --config.entrypoint /opt/nte/bin/numa-topology-exporter --config.cmd serve \
  --config.user 0:0 --config.exposedports 9709/tcp --config.workingdir / \
  --config.env PATH=/opt/nte/bin:/usr/bin:/bin \
  --config.label "org.opencontainers.image.title=$NAME" --config.label "org.opencontainers.image.version=$VERSION"
umoci unpack --image "$OUT/oci:$VERSION" "$WORK/bundle" >/dev/null
rm -rf "$WORK/bundle/rootfs" && mv "$ROOTFS" "$WORK/bundle/rootfs"
umoci repack --image "$OUT/oci:$VERSION" "$WORK/bundle"
umoci rm --image "$OUT/oci:$NAME" 2>/dev/null || true
umoci gc --layout "$OUT/oci"
rm -f "$OUT/$NAME-$VERSION.oci.tar"
skopeo copy --quiet "oci:$OUT/oci:$VERSION" "oci-archive:$OUT/$NAME-$VERSION.oci.tar:$NAME:$VERSION"
echo "$OUT/$NAME-$VERSION.oci.tar ($(du -m "$OUT/$NAME-$VERSION.oci.tar" | cut -f1) MB)"
