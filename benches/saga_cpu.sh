#!/usr/bin/env bash
# Machine CPU per saga (node and PostgreSQL together), from /proc/stat over
# one `bench sagas` run: steadier than sagas/s on a VM whose speed drifts.
# Usage: benches/saga_cpu.sh [SAGAS] [CONCURRENCY]   (release build first)
set -euo pipefail
sagas=${1:-4000}
concurrency=${2:-256}
db=vv_saga_cpu
url="postgres://postgres@127.0.0.1/$db"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
./target/release/valueverse migrate --database-url "$url" >/dev/null
read -r _ u1 n1 s1 _ _ q1 sq1 _ < /proc/stat
result=$(./target/release/valueverse bench sagas --concurrency "$concurrency" --sagas "$sagas" --database-url "$url" | tail -1)
read -r _ u2 n2 s2 _ _ q2 sq2 _ < /proc/stat
ticks=$(( (u2 + n2 + s2 + q2 + sq2) - (u1 + n1 + s1 + q1 + sq1) ))
hz=$(getconf CLK_TCK)
echo "$result"
echo "machine CPU per saga: $(echo "scale=3; $ticks * 1000 / $hz / $sagas" | bc) ms"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE $db" >/dev/null
