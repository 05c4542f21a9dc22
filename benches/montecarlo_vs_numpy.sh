#!/usr/bin/env bash
# A Monte Carlo engine (the CPU's unless DEVICE=gpu) against the NumPy
# reference: same model, same path count, interleaved rounds in one run,
# medians compared. Needs numpy (pip install numpy).
# Usage: [DEVICE=cpu|gpu] [ROUNDS=3] benches/montecarlo_vs_numpy.sh [PATHS] [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
paths=${1:-${PATHS:-10000000}}
device=${DEVICE:-cpu}
model=${2:-docs/models/ten-drivers.json}
cargo build --release --quiet
# A current numpy runs slower with these set (see the machine notes).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
# Interleaved rounds (this VM drifts between runs); the median of each.
rounds=${ROUNDS:-3}
numpy_runs=() ours_runs=()
for _ in $(seq "$rounds"); do
  numpy_runs+=("$(python3 benches/reference/numpy_mc.py "$model" "$paths" 7)")
  ours_runs+=("$(./target/release/valueverse simulate "$model" --paths "$paths" --seed 7 --device "$device" --json)")
done
python3 - "${#numpy_runs[@]}" "${numpy_runs[@]}" "${ours_runs[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
numpy = [json.loads(line) for line in sys.argv[2:2 + n]]
ours = [json.loads(text) for text in sys.argv[2 + n:]]
def runs(results):
    return ", ".join("%.1f" % (r["samples_per_second"] / 1e6) for r in results)
np_rate = statistics.median(r["samples_per_second"] for r in numpy)
our_rate = statistics.median(r["samples_per_second"] for r in ours)
print(f"model: {numpy[0]['drivers']} drivers, {ours[0]['paths']} paths, {n} interleaved rounds, medians")
print(f"numpy:       {np_rate / 1e6:.1f} M samples/s  (runs: {runs(numpy)})  mean {numpy[0]['mean']:.0f}  p50 {numpy[0]['p50']:.0f}")
print(f"valueverse ({ours[0]['engine']}):  {our_rate / 1e6:.1f} M samples/s  (runs: {runs(ours)})  mean {ours[0]['npv']['mean']:.0f}  p50 {ours[0]['npv']['percentiles']['p50']:.0f}")
print(f"ratio: {our_rate / np_rate:.2f}x numpy")
PY
