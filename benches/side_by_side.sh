#!/usr/bin/env bash
# Runs the Python reference's bench scripts, the Rust peers and flowtrace's bench program on
# the same workloads, in one sitting, and prints one JSON line per run.
#
#   bash benches/side_by_side.sh [OUT.jsonl]
#
# Needs ../shared/peers/python-bench (the reference's scripts); makes a venv with
# pocketflow 0.0.3 and pocketflow-tracing 0.1.5 in .venv-bench on first use. The Rust peers
# run when built in $PEERS (default ../rust-peers: `cp -r ../shared/peers/rust-peers
# ../rust-peers && (cd ../rust-peers && cargo build --release)`); without them their lines
# are left out, said once on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-side-by-side.jsonl}
peers=../shared/peers/python-bench
[ -d "$peers" ] || { echo "side_by_side: $peers not found" >&2; exit 2; }
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q pocketflow==0.0.3 pocketflow-tracing==0.1.5
fi
py=$PWD/.venv-bench/bin/python
cargo build --release --example bench -q
rs=target/release/examples/bench

# The reference's Langfuse-compatible sink, for its traced runs.
portfile=$(mktemp)
"$py" "$peers/sink_server.py" --port-file "$portfile" >/dev/null 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$portfile" ] && break; sleep 0.1; done
sink_url="http://127.0.0.1:$(cat "$portfile")"

: > "$out"
py_run() { (cd "$peers" && "$py" "$@" --sink-url "$sink_url") | tail -1 | sed 's/^/{"side":"python","line":/; s/$/}/' | tee -a "$out"; }
rs_run() { "$rs" "$@" | tail -1 | sed 's/^/{"side":"rust","line":/; s/$/}/' | tee -a "$out"; }
rpeers=${PEERS:-../rust-peers}/target/release
[ -x "$rpeers/peer-floxide" ] || echo "side_by_side: no Rust peers in $rpeers; their lines are left out" >&2
peer_run() {
  local bin=$1; shift
  [ -x "$rpeers/$bin" ] || return 0
  "$rpeers/$bin" "$@" | tail -1 | sed "s/^/{\"side\":\"$bin\",\"line\":/; s/\$/}/" | tee -a "$out"
}

# chain: 10 trivial nodes (Python: sync untraced; async traced, as only async flows get node spans)
py_run bench_chain.py --flavor sync --mode plain --n 5000 --repeat 3
py_run bench_chain.py --flavor async --mode traced-noflush --n 100 --repeat 3
rs_run chain --mode untraced --n 20000 --repeat 3
for p in peer-floxide peer-graphflow peer-dagrs peer-pocketflow; do peer_run $p chain --n 5000 --repeat 3; done
rs_run chain --mode traced --n 20000 --repeat 3
# seed: the customer-support flow without its sleeps
py_run bench_seed.py --mode plain --n 5000 --repeat 3
py_run bench_seed.py --mode traced-noflush --n 500 --repeat 3
rs_run seed --mode untraced --n 20000 --repeat 3
rs_run seed --mode traced --n 20000 --repeat 3
# parallel: a parallel batch node over 10,000 items
py_run bench_parallel.py --kind node --items 10000 --mode plain --n 3 --repeat 3
py_run bench_parallel.py --kind node --items 10000 --mode traced-noflush --n 1 --repeat 2
rs_run parallel --mode untraced --n 20 --repeat 3
rs_run parallel --mode untraced --items 1000 --n 50 --repeat 3
for p in peer-floxide peer-graphflow peer-dagrs; do peer_run $p parallel --items 1000 --n 20 --repeat 3; done
rs_run parallel --mode traced --n 20 --repeat 3
# batch: a batch node over 10,000 items
py_run bench_batch.py --items 10000 --mode plain --n 10 --repeat 3
py_run bench_batch.py --items 10000 --mode traced-noflush --n 5 --repeat 3
rs_run batch --mode untraced --n 20 --repeat 3
rs_run batch --mode traced --n 20 --repeat 3
# concurrent: 1,000 concurrent 5-node flows (rust also 10,000, traced, for peak RSS)
py_run bench_concurrent.py --flows 1000 --mode plain --repeat 3
py_run bench_concurrent.py --flows 1000 --instances shared --mode traced-noflush --repeat 2
rs_run concurrent --mode untraced --flows 1000 --n 1 --repeat 3
rs_run concurrent --mode untraced --flows 1000 --n 5 --repeat 3
for p in peer-floxide peer-graphflow peer-dagrs peer-pocketflow; do peer_run $p concurrent --flows 1000 --n 5 --repeat 3; done
rs_run concurrent --mode traced --flows 1000 --n 1 --repeat 3
rs_run concurrent --mode traced --flows 10000 --n 1 --repeat 2
rs_run concurrent --mode traced --flows 100000 --n 1 --repeat 1
# one traced run looping 1,000,000 steps (4,000,001 spans): streamed out as it goes
rs_run loop --mode traced --n 1000000 --repeat 1
# CPU-bound parallel batch (1,000 items of about 50 µs) against the same items one by one
rs_run cpu --mode untraced --n 10 --repeat 3
rs_run cpu_serial --mode untraced --n 10 --repeat 3
# the floor of a traced node: recording and encoding its spans, nothing else
[ -x "$rpeers/floor" ] && "$rpeers/floor" 200000 5 | tail -1 | sed 's/^/{"side":"floor","line":/; s/$/}/' | tee -a "$out"
true
