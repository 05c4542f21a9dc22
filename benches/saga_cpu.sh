#!/usr/bin/env bash
# CPU per saga, from one `valueverse-bench sagas` run: the machine's (node and
# PostgreSQL together, /proc/stat) and the node process's own (user + system
# time): steadier than sagas/s on a VM whose speed drifts.
# Usage: benches/saga_cpu.sh [SAGAS] [CONCURRENCY] [BINARY]   (cargo build --release --workspace first)
# BINARY is a `valueverse`; the `valueverse-bench` beside it runs the sagas
# (a build from before the split has no such file: its `bench sagas` does).
# Two binaries compare best run alternately: A B A B ...
set -euo pipefail
sagas=${1:-4000}
concurrency=${2:-256}
binary=${3:-./target/release/valueverse}
db=vv_saga_cpu
url="postgres://postgres@127.0.0.1/$db"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null 2>&1
"$binary" migrate --database-url "$url" >/dev/null
read -r _ u1 n1 s1 _ _ q1 sq1 _ < /proc/stat
if [ -x "$(dirname "$binary")/valueverse-bench" ]; then
    bench=("$(dirname "$binary")/valueverse-bench")
else
    bench=("$binary" bench)
fi
result=$("${bench[@]}" sagas --concurrency "$concurrency" --sagas "$sagas" --database-url "$url" | tail -1)
read -r _ u2 n2 s2 _ _ q2 sq2 _ < /proc/stat
# The children's user and system time: the bench process, all but psql.
times_file=$(mktemp)
times >"$times_file" # a builtin: run in this shell, not a pipeline's subshell
read -r child_user child_sys < <(tail -1 "$times_file")
rm -f "$times_file"
ticks=$(( (u2 + n2 + s2 + q2 + sq2) - (u1 + n1 + s1 + q1 + sq1) ))
hz=$(getconf CLK_TCK)
seconds() { local m=${1%%m*} s=${1#*m}; echo "$m * 60 + ${s%s}" | bc; }
node=$(echo "$(seconds "$child_user") + $(seconds "$child_sys")" | bc)
echo "$result"
echo "machine CPU per saga: $(echo "scale=3; $ticks * 1000 / $hz / $sagas" | bc) ms"
echo "node CPU per saga: $(echo "scale=3; $node * 1000 / $sagas" | bc) ms"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE $db" >/dev/null
