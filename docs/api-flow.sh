#!/usr/bin/env bash
# The whole flow through the HTTP API, as README.md shows it: a model, its
# simulation, a commitment, a plan, a delivery, the insights, a webhook;
# then the value loop: a commitment started a year ago, twelve months of
# deliveries imported from a file, its twelve statements, a renewal that
# supersedes it.
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

# 7. The value loop. A commitment started twelve months ago (monthly
#    statements), its plan, and a year of realized value imported from a
#    CSV file (an .xlsx works the same: its content type, or ?format=xlsx).
#    A back-dated commitment's past periods are stated at the node's next
#    `[value] tick` (60 s by default): the import comes right after the plan.
START=$(date -u -d "$(date -u +%Y-%m-01) -12 months" +%Y-%m-%d)
LOOP=$(api -X POST "$BASE/api/v1/commitments" -d "{
  \"model_id\": \"$MODEL\", \"confidence\": 0.8, \"target\": $TARGET, \"start_date\": \"$START\",
  \"terms\": {\"fixed_fee\": 36000, \"outcome_share\": 0.2, \"cap\": 60000}
}" | jq -r .id)
LOOP_PLAN=$(api -X POST "$BASE/api/v1/plans" -d "{\"commitment_id\": \"$LOOP\", \"start_date\": \"$START\"}" | jq -r .id)
FILE=$(mktemp --suffix .csv)
echo "Row,Driver,Amount,Booked on" > "$FILE"
for MONTH in $(seq 0 11); do
  DAY=$(date -u -d "$START +$MONTH months +14 days" +%Y-%m-%d)
  echo "m$MONTH-deflection,ticket deflection,$((30000 + MONTH * 1500)),$DAY" >> "$FILE"
  echo "m$MONTH-escalations,escalations avoided,2000,$DAY" >> "$FILE"
done
curl -sS --fail-with-body -H "Authorization: Bearer $KEY" -H 'content-type: text/csv' --data-binary @"$FILE" \
  "$BASE/api/v1/plans/$LOOP_PLAN/deliveries:import?id_column=Row&driver_column=Driver&value_column=Amount&date_column=Booked%20on" \
  | jq -c '{rows, recorded, refused}'
rm -f "$FILE"
echo "waiting for the twelve statements (the next tick)..."
until [ "$(api "$BASE/api/v1/commitments/$LOOP/statements" | jq '.statements | length')" -ge 12 ]; do sleep 2; done
api "$BASE/api/v1/commitments/$LOOP/statements" \
  | jq -c '.statements[] | {period, period_start, committed: (.committed | floor), realized, fee: (.fee | floor), fees_to_date: (.to_date.fees | floor)}'
curl -sS --fail-with-body -H "Authorization: Bearer $KEY" "$BASE/api/v1/commitments/$LOOP/statements/12?format=csv"

# 8. The daily snapshot: realization kept day by day (risks and
#    opportunities are announced to webhooks as drivers cross the margin).
api "$BASE/api/v1/amplifications/$MODEL/history" | jq -c '.points[-1]'

# 9. A renewal: the model simulated again, a new commitment from where the
#    old one stopped stating, the plan moved over, the old one superseded.
SAGA=$(api -X POST "$BASE/api/v1/sagas/renewal" -d "{\"commitment_id\": \"$LOOP\"}" | jq -r .id)
until [ "$(api "$BASE/api/v1/sagas/$SAGA" | jq -r .status)" = completed ]; do sleep 0.5; done
api "$BASE/api/v1/commitments/$LOOP" | jq -c '{status, superseded_by}'
api "$BASE/api/v1/plans/$LOOP_PLAN" | jq -c '{status, commitment_id}'
