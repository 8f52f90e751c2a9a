# syntax=docker/dockerfile:1.7
# Collector image: sysdig from Debian's packages plus `systerns collect`.
#
# Build from the repository root:
#   docker build -f deploy/docker/collector.Dockerfile -t systerns-collector:0.1.0 .
#
# Privileges (it cannot run unprivileged): sysdig reads every syscall on the
# node through the scap kernel module. The container needs
#   - privileged (Kubernetes: securityContext.privileged; compose:
#     privileged: true): loading a module needs CAP_SYS_MODULE, opening the
#     /dev/scapN devices needs a device-cgroup rule a pod spec cannot express,
#     and reading other processes' /proc entries needs CAP_SYS_ADMIN,
#     CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH;
#   - the host PID namespace (hostPID / pid: host), so PIDs in events are the
#     node's PIDs;
#   - the host's /proc, /dev, /boot, /lib/modules, /usr and /etc/os-release
#     under /host (HOST_ROOT below: libscap opens $HOST_ROOT/dev/scapN and
#     reads $HOST_ROOT/proc), and the container runtime socket under /host
#     for container names and images.
#
# Driver loading: `systerns-load-driver` (collector-driver.sh, run as an init
# container or a one-shot compose service) builds the module with DKMS against
# the host's kernel headers from /host/usr/src and loads it. It never
# downloads a prebuilt probe unless the operator sets
# COLLECTOR_DRIVER_DOWNLOAD=yes.
#
# XXX(#6): Debian 12 ships sysdig 0.29.3 with the 2022 scap driver, which
# builds on Debian 12's 6.1 kernel but may fail on much newer kernels and
# lacks the modern eBPF probe. The fix is a newer Debian release's sysdig once
# one ships it; until then nodes on other kernels need a driver built outside.
#
# Base images are pinned by tag; pin them by digest at release time (a digest
# can only be read from the registry, which this build recipe does not reach).
ARG DEBIAN_IMAGE=debian:12.12-slim

FROM ${DEBIAN_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# NOTE: unpinned on purpose: Debian stable replaces a version on each point
# release and security update, so a pin would break the build within months.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
COPY systerns/ systerns/
COPY cli/ cli/
COPY core/ core/
COPY producers/ producers/
COPY streams/ streams/
COPY serving/ serving/
COPY schemas/ schemas/
COPY lab/ lab/
# TODO(#6): install a collector-only extra once pyproject.toml has one; the
# full dependency set brings tensorflow-cpu, which the collector never loads.
RUN python3 -m venv /opt/systerns \
 && /opt/systerns/bin/pip install . \
 && /opt/systerns/bin/systerns --help > /dev/null

FROM ${DEBIAN_IMAGE} AS collector
ARG SYSDIG_VERSION=0.29.3-1+b1
ARG SCAP_DKMS_VERSION=0.1.1dev+git20220316.e5c53d64-5.1
# sysdig and its driver source are pinned together: the module must speak the
# driver API this sysdig expects. dkms, gcc, make and kmod build and load it;
# curl is only there because scap-driver-loader refuses to start without it,
# even when told not to download. The rest stays unpinned, as in `build`.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 \
      sysdig=${SYSDIG_VERSION} \
      falcosecurity-scap-dkms=${SCAP_DKMS_VERSION} \
      dkms gcc make kmod curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/systerns /opt/systerns
COPY deploy/docker/collector-driver.sh /usr/local/bin/systerns-load-driver
ENV PATH=/opt/systerns/bin:${PATH} \
    HOST_ROOT=/host \
    PYTHONUNBUFFERED=1 \
    SYSTERNS_METRICS_PORT=9108
EXPOSE 9108
# Runs as root: see "Privileges" above.
ENTRYPOINT ["systerns"]
CMD ["collect", "--live"]
