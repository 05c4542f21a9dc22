#!/usr/bin/env bash
# The whole flow through the HTTP API, as README.md shows it: a model, its
# simulation, a commitment, a plan, a delivery, the insights, a webhook.
# Needs curl and jq, and a node: `cargo run --release -- serve`.
# Usage: KEY=vv_... [BASE=http://127.0.0.1:8080] docs/api-flow.sh
set -euo pipefail
BASE=${BASE:-http://127.0.0.1:8080}
api() { curl -sS --fail-with-body -H "Authorization: Bearer $KEY" -H 'content-type: application/json' "$@"; }

# 1. A webhook for every event (any receiver; https://webhook.site works too).
api -X POST "$BASE/api/v1/webhooks" \
  -d '{"url": "http://127.0.0.1:9999/hook", "secret": "change-me-to-a-long-secret", "event_types": ["*"]}' | jq -c '{id, event_types}'

# 2. The architect stores a model; analytics come back at once.
MODEL=$(api -X POST "$BASE/api/v1/value-models" -d @docs/models/acme-support.json | jq -r .id)
api "$BASE/api/v1/value-models/$MODEL" | jq -c '{id, version, npv: .analytics.npv, payback: .analytics.payback_month}'
api -X POST "$BASE/api/v1/value-models/$MODEL/hypotheses" -d '{"limit": 3}' | jq -c '[.hypotheses[].name]'

# 3. Simulate it (by id), and wait for the result.
JOB=$(api -X POST "$BASE/api/v1/simulations" -d "{\"model_id\": \"$MODEL\", \"paths\": 1000000}" | jq -r .id)
until [ "$(api "$BASE/api/v1/simulations/$JOB" | jq -r .status)" = done ]; do sleep 0.2; done
P20=$(api "$BASE/api/v1/simulations/$JOB/results" | jq '.result.npv_quantiles[19]')
echo "NPV reached with 80% confidence: $P20"

# 4. Commit to a target the simulation supports at 80%.
TARGET=$(jq -n "$P20 * 0.9 | floor")
COMMITMENT=$(api -X POST "$BASE/api/v1/commitments" -d "{
  \"model_id\": \"$MODEL\", \"confidence\": 0.8, \"target\": $TARGET,
  \"terms\": {\"fixed_fee\": 50000, \"outcome_share\": 0.2, \"cap\": 400000},
  \"milestones\": [{\"name\": \"pilot live\", \"due_date\": \"2027-03-31\", \"expected_value\": 100000}]
}" | jq -r .id)

# 5. Plan it, record progress and a delivery.
PLAN=$(api -X POST "$BASE/api/v1/plans" -d "{
  \"commitment_id\": \"$COMMITMENT\", \"start_date\": \"2027-01-01\",
  \"tasks\": [{\"name\": \"deploy bot\", \"owner\": \"ana\", \"due_date\": \"2027-03-15\", \"milestone\": \"pilot live\"}]
}" | jq -r .id)
api -X POST "$BASE/api/v1/plans/$PLAN/progress" -d '{"task": "t1", "status": "done"}' | jq -c '{progress_percent, milestones: [.milestones[].status]}'
api -X POST "$BASE/api/v1/plans/$PLAN/deliveries" \
  -d '{"id": "feb-deflection", "driver": "ticket deflection", "value": 60000, "date": "2027-02-28"}' | jq -c .realized_value

# 6. Realized against committed, with opportunities and risks.
api "$BASE/api/v1/amplifications/$MODEL/insights?as_of=2027-03-01" \
  | jq -c '{realization_percent, opportunities: [.opportunities[].driver], risks: [.risks[].driver]}'
