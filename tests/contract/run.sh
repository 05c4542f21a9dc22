#!/usr/bin/env bash
# The OpenAPI document is the API: schemathesis (every check) against a
# real node with an admin key, and a client generated from the document by
# openapi-python-client covering every operation without a warning.
# Run by .ci/run after `cargo build --release`; needs python3 and network
# access to PyPI on the first run (the tools go in target/contract-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=target/release/valueverse
venv=target/contract-venv
if [ ! -x "$venv/bin/st" ] || [ ! -x "$venv/bin/openapi-python-client" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'schemathesis==4.32.5' 'openapi-python-client==0.29.1'
fi

work=$(mktemp -d)
node_pid=
cleanup() {
    if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

db="sqlite://$work/contract.db"
key=$("$bin" apikey create --role admin --name contract --database-url "$db" 2>/dev/null)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
"$bin" serve --config tests/contract/node.toml --http "127.0.0.1:$port" --database-url "$db" \
    --log warn >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 100); do
    curl -fs "$base/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "$base/health" >/dev/null || { cat "$work/node.log" >&2; echo "the node did not start" >&2; exit 1; }

echo "== schemathesis (every check; WebSocket routes are tested in tests/it)"
"$venv/bin/st" --config-file tests/contract/schemathesis.toml run "$base/api-docs/openapi.json" \
    -H "Authorization: Bearer $key" --checks all --workers 2 --exclude-path-regex '^/ws/' \
    --no-color

echo "== a client generated from the document"
curl -fs "$base/api-docs/openapi.json" >"$work/openapi.json"
printf 'post_hooks: []\n' >"$work/client.yaml"
"$venv/bin/openapi-python-client" generate --path "$work/openapi.json" \
    --output-path "$work/client" --overwrite --config "$work/client.yaml" 2>&1 | tee "$work/generate.log"
if grep -qi 'warning' "$work/generate.log"; then
    echo "the client generator warned: the document is not the API" >&2
    exit 1
fi
operations=$(python3 -c '
import json, sys
doc = json.load(open(sys.argv[1]))
print(sum(1 for item in doc["paths"].values() for method in item
          if method in ("get", "put", "post", "delete", "patch")))' "$work/openapi.json")
generated=$(find "$work"/client/*/api -mindepth 2 -name '*.py' ! -name '__init__.py' | wc -l)
echo "operations in the document: $operations; in the generated client: $generated"
[ "$operations" -eq "$generated" ] || { echo "the generated client lacks operations" >&2; exit 1; }
