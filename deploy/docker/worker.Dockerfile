# syntax=docker/dockerfile:1.7
# Worker image: the Faust app (`systerns worker`) that sessionizes events,
# asks the model over gRPC and writes verdicts, alerts and dead letters.
#
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t systerns-worker:0.1.0 .
#
# Runs as an unprivileged user with a read-only root filesystem; Faust keeps
# its table data under /var/lib/systerns (a volume in compose and Kubernetes).
#
# Base images are pinned by tag; pin them by digest at release time.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TF_SERVING_API_VERSION=2.21.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
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
# NOTE: tensorflow-serving-api goes in with --no-deps, as in
# scripts/install.sh: its metadata pins the full tensorflow wheel beside
# tensorflow-cpu, and its protos only need tensorflow-cpu.
RUN python -m venv /opt/systerns \
 && /opt/systerns/bin/pip install . \
 && /opt/systerns/bin/pip install --no-deps "tensorflow-serving-api==${TF_SERVING_API_VERSION}" \
 && /opt/systerns/bin/systerns --help > /dev/null

FROM ${PYTHON_IMAGE} AS worker
RUN groupadd --system --gid 10001 systerns \
 && useradd --system --uid 10001 --gid systerns --home-dir /var/lib/systerns \
      --shell /usr/sbin/nologin systerns \
 && install -d -o systerns -g systerns /var/lib/systerns
COPY --from=build /opt/systerns /opt/systerns
ENV PATH=/opt/systerns/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    SYSTERNS_METRICS_PORT=9109
WORKDIR /var/lib/systerns
USER 10001:10001
EXPOSE 9109
ENTRYPOINT ["systerns"]
CMD ["worker"]
