#!/usr/bin/env bash
# The CPU Monte Carlo engine against the NumPy reference, same model, same
# path count, one run each, side by side. Needs numpy (pip install numpy).
# Usage: benches/montecarlo_vs_numpy.sh [PATHS] [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
paths=${1:-10000000}
model=${2:-docs/models/ten-drivers.json}
cargo build --release --quiet
# A current numpy runs slower with these set (see the machine notes).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
numpy=$(python3 benches/reference/numpy_mc.py "$model" "$paths" 7)
ours=$(./target/release/valueverse simulate "$model" --paths "$paths" --seed 7 --json)
python3 - "$numpy" "$ours" <<'PY'
import json, sys
numpy, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
drivers = numpy["drivers"]
print(f"model: {drivers} drivers, {ours['paths']} paths")
print(f"numpy:       {numpy['seconds']:.2f} s  {numpy['samples_per_second'] / 1e6:.1f} M samples/s  mean {numpy['mean']:.0f}  p50 {numpy['p50']:.0f}")
print(f"valueverse:  {ours['wall_seconds']:.2f} s  {ours['samples_per_second'] / 1e6:.1f} M samples/s  mean {ours['npv']['mean']:.0f}  p50 {ours['npv']['percentiles']['p50']:.0f}")
print(f"ratio: {ours['samples_per_second'] / numpy['samples_per_second']:.2f}x numpy")
PY
