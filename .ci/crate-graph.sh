#!/usr/bin/env bash
# The architecture's dependency rules, checked on the crate graph
# (ARCHITECTURE.md, "Architecture invariants"): each rule is a dependency
# edge that must not exist.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
tree() {
    local out
    out=$(cargo tree --locked -e normal --prefix none "$@") || { echo "crate graph: cargo tree $* failed" >&2; exit 1; }
    [ -n "$out" ] || { echo "crate graph: cargo tree $* printed nothing" >&2; exit 1; }
    sed 's/ (.*//; s/ v[0-9].*//' <<<"$out" | sort -u
}
refuse() { # PACKAGE FORBIDDEN...
    local package=$1; shift
    local deps
    deps=$(tree -p "$package") || exit 1
    for forbidden in "$@"; do
        if grep -qx "$forbidden" <<<"$deps"; then
            echo "crate graph: $package depends on $forbidden" >&2
            failed=1
        fi
    done
}

refuse_direct() { # PACKAGE FORBIDDEN...: no direct (normal) dependency
    local package=$1; shift
    local deps
    deps=$(tree -p "$package" --depth 1) || exit 1
    for forbidden in "$@"; do
        if grep -qx "$forbidden" <<<"$deps"; then
            echo "crate graph: $package depends on $forbidden directly" >&2
            failed=1
        fi
    done
}

# Only the store crate reaches the database.
sqlx_users=$(tree -i sqlx --depth 1 | grep -v '^sqlx$')
if [ "$sqlx_users" != "valueverse-store" ]; then
    echo "crate graph: sqlx is a direct dependency of: $sqlx_users (only valueverse-store may)" >&2
    failed=1
fi
refuse valueverse-gpu actix actix-web sqlx utoipa valueverse-store valueverse-runtime valueverse-cluster
refuse valueverse-runtime valueverse-store valueverse-cluster valueverse-agents valueverse actix-web utoipa
refuse valueverse-cluster valueverse valueverse-agents actix-web utoipa
refuse valueverse-agents valueverse valueverse-http actix-web utoipa clap
refuse valueverse-http valueverse
refuse valueverse tokio-tungstenite criterion
# The API reaches the store only through the agents' services, and the
# binary reaches HTTP only through the API crate: no direct edge (the
# store is in the API's tree through the agents, which do not re-export it).
refuse_direct valueverse-http valueverse-store
refuse_direct valueverse actix-web actix-ws utoipa sqlx
if grep -rqE 'pub use valueverse_store( |;|::\*)' src/actors/agents; then
    echo "crate graph: valueverse-agents re-exports the store crate" >&2
    failed=1
fi
[ "$failed" = 0 ] && echo "crate graph: every rule holds"
exit "$failed"
