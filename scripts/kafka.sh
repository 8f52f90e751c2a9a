#!/usr/bin/env bash
# Local single-node Kafka (KRaft) for the demo, the tests and CI.
#
#   scripts/kafka.sh fetch     download Kafka's jars from Maven Central (cached)
#   scripts/kafka.sh start     format storage if needed, start, wait, create topics
#   scripts/kafka.sh stop      stop the broker started here, by its PID
#   scripts/kafka.sh status    exit 0 when the broker answers
#
# Settings (environment):
#   SYSTERNS_KAFKA_HOME        cache and data folder   (default: <repo>/.cache/kafka)
#   SYSTERNS_KAFKA_PORT        client port on 127.0.0.1 (default: 9092)
#   SYSTERNS_KAFKA_CONTROLLER_PORT                     (default: 9093)
#   SYSTERNS_EVENTS_PARTITIONS partitions of the events topic (default: 6)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${SYSTERNS_KAFKA_HOME:-$ROOT/.cache/kafka}"
PORT="${SYSTERNS_KAFKA_PORT:-9092}"
CPORT="${SYSTERNS_KAFKA_CONTROLLER_PORT:-9093}"
LIBS="$HOME_DIR/libs"
DATA="$HOME_DIR/data-$PORT"
PIDFILE="$HOME_DIR/broker-$PORT.pid"
LOG="$HOME_DIR/broker-$PORT.log"
CONF="$HOME_DIR/server-$PORT.properties"
EVENTS_PARTITIONS="${SYSTERNS_EVENTS_PARTITIONS:-6}"

log() { printf 'kafka event=%s %s\n' "$1" "${*:2}" >&2; }

fetch() {
  if compgen -G "$LIBS/kafka_2.13-*.jar" > /dev/null && compgen -G "$LIBS/log4j-core-*.jar" > /dev/null; then
    return 0
  fi
  log fetch_jars dest="$LIBS"
  mkdir -p "$LIBS"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$LIBS" -DincludeScope=runtime
}

java_cp() { echo "$LIBS/*"; }

write_conf() {
  mkdir -p "$DATA"
  cat > "$CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=4194304
log.retention.hours=168
CONF
  cat > "$HOME_DIR/log4j2.yaml" <<'L4J'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
L4J
}

running() {
  [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2> /dev/null
}

answers() {
  python3 - "$PORT" <<'PY'
import socket, sys
from confluent_kafka.admin import AdminClient
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}", "log_level": 0})
try:
    admin.list_topics(timeout=2)
except Exception:
    sys.exit(1)
PY
}

create_topics() {
  python3 - "$PORT" "$EVENTS_PARTITIONS" <<'PY'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
port, events_partitions = sys.argv[1], int(sys.argv[2])
admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
day_ms = 24 * 3600 * 1000
specs = [
    ("systerns.events", events_partitions, 7 * day_ms),
    ("systerns.verdicts", events_partitions, 7 * day_ms),
    ("systerns.alerts", 3, 30 * day_ms),
    ("systerns.deadletter", 3, 30 * day_ms),
]
existing = set(admin.list_topics(timeout=10).topics)
new = [NewTopic(name, num_partitions=p, replication_factor=1,
                config={"retention.ms": str(ret), "max.message.bytes": "4194304"})
       for name, p, ret in specs if name not in existing]
for name, fut in (admin.create_topics(new).items() if new else []):
    fut.result()
    print(f"kafka event=topic_created topic={name}", file=sys.stderr)
PY
}

start() {
  fetch
  if running; then log already_running pid="$(cat "$PIDFILE")" port="$PORT"; create_topics; return 0; fi
  write_conf
  if [[ ! -f "$DATA/meta.properties" ]]; then
    log format_storage dir="$DATA"
    java -cp "$(java_cp)" -Dlog4j2.configurationFile="$HOME_DIR/log4j2.yaml" \
      kafka.tools.StorageTool format --standalone -t "$(java -cp "$(java_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)" \
      -c "$CONF" > /dev/null 2>&1
  fi
  log starting port="$PORT" log="$LOG"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -cp "$(java_cp)" \
    -Dlog4j2.configurationFile="$HOME_DIR/log4j2.yaml" \
    kafka.Kafka "$CONF" > "$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if answers; then log ready port="$PORT" pid="$(cat "$PIDFILE")"; create_topics; return 0; fi
    if ! running; then log failed log="$LOG"; tail -n 30 "$LOG" >&2; return 1; fi
    sleep 0.5
  done
  log timeout port="$PORT"; return 1
}

stop() {
  if ! running; then log not_running port="$PORT"; rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2> /dev/null && kill -KILL "$pid"
  rm -f "$PIDFILE"
  log stopped pid="$pid"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) answers ;;
  reset) stop; rm -rf "$DATA" ;;
  *) echo "usage: $0 fetch|start|stop|status|reset" >&2; exit 2 ;;
esac
