#!/usr/bin/env bash
# Build isvc's CPU runtime image on a machine that can pull no image:  deploy/image/build.sh
#
# Debian's buildah builds deploy/image/Containerfile with chroot isolation. The base is a Debian bookworm
# root filesystem (Python 3.11) made by mmdebstrap from Debian's packages and imported as a local image;
# both tools are installed with apt-get when missing. Python packages come from PyPI through the host's pip
# cache (bound into the build, so a rebuild downloads nothing again). torch's CPU wheel comes from a local
# wheel folder of the host's pip configuration when one holds it, else from PyTorch's CPU index.
#
# Environment (all optional): IMAGE (localhost/isvc:cpu), BASE_IMAGE (localhost/isvc-base:bookworm),
# PIP_CACHE (the host's `pip cache dir`), CA_BUNDLE (the host pip's `cert`), TORCH_WHEELS (a folder holding
# torch's CPU wheel), SUITE (bookworm).
# Arguments go to `buildah bud` (e.g. --no-cache). Prints the image size and the build time at the end.
set -euo pipefail

cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-localhost/isvc:cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/isvc-base:bookworm}
SUITE=${SUITE:-bookworm}
# the base's Debian packages: Python 3.11 with venv, certificates for pip, gcc for isvc's kernels
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates,gcc,libc6-dev
TORCH_VERSION=$(sed -n 's/^ *"torch==\([^"]*\)",*$/\1/p' pyproject.toml)
started=$(date +%s)

if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
    echo "== installing buildah and mmdebstrap (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq buildah mmdebstrap >/dev/null
fi

if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "== base $BASE_IMAGE: already built"
else
    echo "== base $BASE_IMAGE: mmdebstrap --variant=minbase $SUITE + $BASE_PACKAGES"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # no recommended packages (python3-pip's would bring g++); /usr merged by mmdebstrap's hook rather than
    # the usrmerge package (which brings perl); no manuals, docs or translations (the copyright files stay)
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "$SUITE" "$work/rootfs.tar"
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$work/rootfs.tar" /  # a local tar is unpacked
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/sh "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
    rm -rf "$work"
    trap - EXIT
    echo "== base made in $(($(date +%s) - started))s"
fi

volumes=()
args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "TORCH_VERSION=$TORCH_VERSION")
PIP_CACHE=${PIP_CACHE:-$(python3 -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")}
mkdir -p "$PIP_CACHE"
volumes+=(-v "$PIP_CACHE:/var/cache/isvc-pip")
args+=(--build-arg PIP_CACHE=/var/cache/isvc-pip)

# The CA file the host's pip trusts (PIP_CERT or pip's `cert`), for a proxy that re-signs TLS.
CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}}
if [ -n "$CA_BUNDLE" ] && [ -f "$CA_BUNDLE" ]; then
    volumes+=(-v "$CA_BUNDLE:/var/cache/isvc-ca.crt:ro")
    args+=(--build-arg CA_BUNDLE=/var/cache/isvc-ca.crt)
fi

# A local wheel folder that pip is configured with (this machine's find-links) and that holds torch's CPU
# wheel: bind it in and skip PyTorch's index.
if [ -z "${TORCH_WHEELS:-}" ]; then
    for dir in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
        if compgen -G "$dir/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then TORCH_WHEELS=$dir; break; fi
    done
fi
if [ -n "${TORCH_WHEELS:-}" ]; then
    echo "== torch $TORCH_VERSION+cpu from $TORCH_WHEELS"
    volumes+=(-v "$TORCH_WHEELS:/var/cache/isvc-wheels:ro")
    args+=(--build-arg WHEELS_DIR=/var/cache/isvc-wheels --build-arg TORCH_INDEX_URL=)
fi

previous=$(buildah images --quiet --no-trunc "$IMAGE" 2>/dev/null || true)
echo "== buildah bud -f deploy/image/Containerfile -t $IMAGE"
buildah bud --isolation chroot --network host --layers --pull=never \
    --ignorefile deploy/image/Containerfile.dockerignore \
    "${volumes[@]}" "${args[@]}" "$@" -f deploy/image/Containerfile -t "$IMAGE" .

if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$IMAGE")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true  # the image this tag named before, now untagged
fi
elapsed=$(($(date +%s) - started))
echo "== built $IMAGE in ${elapsed}s; size: $(buildah images --format '{{.Size}}' "$IMAGE" | head -1)"
