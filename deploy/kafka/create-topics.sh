#!/usr/bin/env bash
# Creates the Systerns topics when absent and enforces their settings; safe to rerun.
#
# Runs in the apache/kafka image (compose service `topics`, Kubernetes Job
# `systerns-topics`). Faust creates its own changelog topics
# (<app id>-<table>-changelog) at worker start; they are not listed here.
#
# Environment:
#   SYSTERNS_BOOTSTRAP_SERVERS   host:port[,host:port]            (required)
#   SYSTERNS_SECURITY_PROTOCOL   PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
#   SYSTERNS_SASL_MECHANISM      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
#   SYSTERNS_SASL_USERNAME, SYSTERNS_SASL_PASSWORD
#   SYSTERNS_SSL_CA_LOCATION     PEM file with the broker CA
#   TOPIC_REPLICATION_FACTOR     default 3 (compose sets 1)
#   TOPIC_MIN_INSYNC_REPLICAS    default 2 (compose sets 1)
#   KAFKA_BIN                    default /opt/kafka/bin
set -euo pipefail

: "${SYSTERNS_BOOTSTRAP_SERVERS:?SYSTERNS_BOOTSTRAP_SERVERS is required}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
REPLICATION="${TOPIC_REPLICATION_FACTOR:-3}"
MIN_ISR="${TOPIC_MIN_INSYNC_REPLICAS:-2}"

DAY_MS=86400000
# 4 MiB matches the broker's message.max.bytes: one event batch per message.
MAX_MESSAGE_BYTES=4194304

# name                 partitions  retention.ms
TOPICS="
systerns.events        12          $((7 * DAY_MS))
systerns.verdicts      12          $((7 * DAY_MS))
systerns.alerts        3           $((30 * DAY_MS))
systerns.deadletter    3           $((30 * DAY_MS))
"

log() { printf 'topics event=%s %s\n' "$1" "${*:2}" >&2; }

write_client_config() {
  local protocol="${SYSTERNS_SECURITY_PROTOCOL:-PLAINTEXT}"
  echo "security.protocol=${protocol}"
  if [[ "$protocol" == SASL_* ]]; then
    local module
    case "${SYSTERNS_SASL_MECHANISM:?SYSTERNS_SASL_MECHANISM is required for SASL}" in
      PLAIN) module=org.apache.kafka.common.security.plain.PlainLoginModule ;;
      SCRAM-SHA-256 | SCRAM-SHA-512) module=org.apache.kafka.common.security.scram.ScramLoginModule ;;
      *) log unsupported_mechanism mechanism="$SYSTERNS_SASL_MECHANISM"; exit 2 ;;
    esac
    # NOTE: JAAS quoting: a password holding `"` or `\` breaks this line; the
    # credentials Secret must avoid those two characters.
    echo "sasl.mechanism=${SYSTERNS_SASL_MECHANISM}"
    echo "sasl.jaas.config=${module} required username=\"${SYSTERNS_SASL_USERNAME:?}\" password=\"${SYSTERNS_SASL_PASSWORD:?}\";"
  fi
  if [[ -n "${SYSTERNS_SSL_CA_LOCATION:-}" ]]; then
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=${SYSTERNS_SSL_CA_LOCATION}"
  fi
}

main() {
  CLIENT_CONFIG="$(mktemp)"
  trap 'rm -f "$CLIENT_CONFIG"' EXIT
  write_client_config > "$CLIENT_CONFIG"

  local name partitions retention_ms settings
  while read -r name partitions retention_ms; do
    [[ -z "$name" ]] && continue
    settings="retention.ms=${retention_ms},max.message.bytes=${MAX_MESSAGE_BYTES},min.insync.replicas=${MIN_ISR},cleanup.policy=delete"

    "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$SYSTERNS_BOOTSTRAP_SERVERS" \
      --command-config "$CLIENT_CONFIG" --create --if-not-exists --topic "$name" \
      --partitions "$partitions" --replication-factor "$REPLICATION" \
      --config "retention.ms=${retention_ms}" --config "max.message.bytes=${MAX_MESSAGE_BYTES}" \
      --config "min.insync.replicas=${MIN_ISR}" --config cleanup.policy=delete

    # An existing topic keeps its partition count on purpose: adding
    # partitions moves keys and breaks Faust's co-partitioned tables.
    "$KAFKA_BIN/kafka-configs.sh" --bootstrap-server "$SYSTERNS_BOOTSTRAP_SERVERS" \
      --command-config "$CLIENT_CONFIG" --alter --entity-type topics --entity-name "$name" \
      --add-config "$settings"
    log topic_ready topic="$name" partitions="$partitions" retention_ms="$retention_ms"
  done <<< "$TOPICS"
}

main "$@"
