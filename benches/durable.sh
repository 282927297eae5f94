#!/usr/bin/env bash
#   bash benches/durable.sh      (NATS_SERVER_BIN names the nats-server binary)
# Durable-run figures: checkpoint cost and runs/s with 1, 2 and 3 workers on one local nats-server.
set -u
cd "$(dirname "$0")/.."
cargo build --release --features nats --example distributed -q
B=target/release/examples/distributed
S=${NATS_SERVER_BIN:-nats-server}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sd=$(mktemp -d)
"$S" -js -a 127.0.0.1 -p $port -sd $sd >/dev/null 2>&1 & srv=$!
trap 'kill $srv 2>/dev/null; rm -rf $sd' EXIT
# Wait until the server accepts connections (at most 10 s).
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
U=nats://127.0.0.1:$port
$B bench-checkpoint --nats $U --n 5000
$B bench-checkpoint --embedded $sd/cp.redb --n 2000
for w in 1 2 3; do
  pids=()
  for i in $(seq $w); do FLOWTRACE_TRACE_FILE=$sd/w$w-$i.jsonl STEP_MS=0 $B worker --nats $U --name w$w-$i --concurrency 32 >$sd/w$w-$i.out 2>&1 & pids+=($!); done
  # Each worker says "worker NAME ready" once it has joined the consumer (at most 20 s).
  for i in $(seq $w); do
    for _ in $(seq 200); do grep -q "ready" $sd/w$w-$i.out 2>/dev/null && break; sleep 0.1; done
    grep -q "ready" $sd/w$w-$i.out || { echo "worker w$w-$i did not start:"; cat $sd/w$w-$i.out; exit 1; }
  done
  echo "workers=$w $($B submit --nats $U --runs 3000)"
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null
done
