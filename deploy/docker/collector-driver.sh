#!/usr/bin/env bash
# Builds and loads the scap kernel module for sysdig on this node, then exits.
#
# Runs before the collector (Kubernetes init container, compose one-shot
# service), privileged, with the host's /lib/modules, /usr, /boot and
# /etc/os-release mounted read-only under $HOST_ROOT (scap-driver-loader exits
# when it cannot read the OS identity). Exit 0 means /dev/scap* exist on the
# node.
#
# Environment:
#   HOST_ROOT                    where the host's folders are mounted (default /host)
#   COLLECTOR_DRIVER             module (default) | skip (the node loads it itself)
#   COLLECTOR_DRIVER_DOWNLOAD    yes = also try a prebuilt module from the
#                                driver repository (outbound HTTPS); default no
set -euo pipefail

HOST_ROOT="${HOST_ROOT:-/host}"
DRIVER="${COLLECTOR_DRIVER:-module}"
DOWNLOAD="${COLLECTOR_DRIVER_DOWNLOAD:-no}"
KERNEL_RELEASE="$(uname -r)"

log() { printf 'collector-driver event=%s %s\n' "$1" "${*:2}" >&2; }

if [[ "$DRIVER" == skip ]]; then
  log skipped reason=COLLECTOR_DRIVER=skip
  exit 0
fi
if [[ "$DRIVER" != module ]]; then
  log unsupported_driver driver="$DRIVER"
  exit 2
fi

# Already loaded (by an earlier pod or by the node): leave it. The loader
# script would unload and reload it, cutting off any other consumer.
if grep -q '^scap ' /proc/modules; then
  log already_loaded kernel="$KERNEL_RELEASE"
  exit 0
fi

# DKMS builds against /lib/modules/<release>/build, which on the host is a
# link into /usr/src. Link the host's header trees into this container's
# /usr/src (beside the scap source DKMS ships) and give DKMS a writable
# /lib/modules/<release> whose build link points at them.
for tree in "$HOST_ROOT"/usr/src/*; do
  [[ -e "$tree" ]] || continue
  target="/usr/src/$(basename "$tree")"
  [[ -e "$target" ]] || ln -s "$tree" "$target"
done
mkdir -p "/lib/modules/$KERNEL_RELEASE"
if [[ ! -e "$HOST_ROOT/lib/modules/$KERNEL_RELEASE/build" ]]; then
  log no_kernel_headers kernel="$KERNEL_RELEASE" \
    hint="install the node's kernel headers, or set COLLECTOR_DRIVER_DOWNLOAD=yes"
fi
ln -sfn "$HOST_ROOT/lib/modules/$KERNEL_RELEASE/build" "/lib/modules/$KERNEL_RELEASE/build"

args=(module --compile)
if [[ "$DOWNLOAD" == yes ]]; then
  args+=(--download)
fi
log loading kernel="$KERNEL_RELEASE" download="$DOWNLOAD"
exec scap-driver-loader "${args[@]}"
