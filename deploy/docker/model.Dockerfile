# syntax=docker/dockerfile:1.7
# Model images: the exported SavedModel versions, checked, in TF Serving layout.
#
# `systerns train` exports to models/systerns/<version>/saved_model.pb in the
# repository; this file packages what is there. Targets:
#   model-files  /models/systerns/<version>/ on busybox; the Kubernetes
#                serving Deployment copies it into the pod (init container).
#   serving      tensorflow/serving with the models and deploy/serving/*.config
#                baked in, for hosts without Kubernetes (the default target).
#
#   docker build -f deploy/docker/model.Dockerfile --target model-files \
#     -t systerns-model:2 .
#
# All stages run as an unprivileged user. Base images are pinned by tag; pin
# them by digest at release time.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG SERVING_IMAGE=tensorflow/serving:2.21.0
ARG FILES_IMAGE=busybox:1.37.0

# Refuses to build unless every version folder is numeric, holds
# saved_model.pb and has the `serving_default` signature the worker calls
# (saved_model_cli comes with tensorflow-cpu).
FROM ${PYTHON_IMAGE} AS model-export
ARG TENSORFLOW_VERSION=2.21.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "tensorflow-cpu==${TENSORFLOW_VERSION}" \
 && useradd --system --uid 65532 --no-create-home check
COPY --chown=65532:65532 models/ /export/models/
USER 65532:65532
RUN set -eu; \
    found=0; \
    for dir in /export/models/systerns/*/; do \
      [ -d "$dir" ] || continue; \
      case "$(basename "$dir")" in \
        *[!0-9]*) echo "$dir: TF Serving loads only numeric version folders" >&2; exit 1 ;; \
      esac; \
      test -f "$dir/saved_model.pb" || { echo "$dir: saved_model.pb missing" >&2; exit 1; }; \
      saved_model_cli show --dir "$dir" --tag_set serve --signature_def serving_default > /dev/null; \
      found=$((found + 1)); \
    done; \
    test "$found" -gt 0 || { echo "no versions in models/systerns: run systerns train first" >&2; exit 1; }

FROM ${FILES_IMAGE} AS model-files
COPY --from=model-export --chown=65532:65532 /export/models/systerns/ /models/systerns/
USER 65532:65532

FROM ${SERVING_IMAGE} AS serving
COPY --from=model-export --chown=65532:65532 /export/models/systerns/ /models/systerns/
COPY deploy/serving/models.config deploy/serving/batching.config \
     deploy/serving/monitoring.config /etc/systerns/serving/
USER 65532:65532
EXPOSE 8500 8501
ENTRYPOINT ["tensorflow_model_server", \
  "--port=8500", \
  "--rest_api_port=8501", \
  "--model_config_file=/etc/systerns/serving/models.config", \
  "--model_config_file_poll_wait_seconds=60", \
  "--enable_batching=true", \
  "--batching_parameters_file=/etc/systerns/serving/batching.config", \
  "--monitoring_config_file=/etc/systerns/serving/monitoring.config"]
