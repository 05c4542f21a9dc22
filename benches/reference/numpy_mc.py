#!/usr/bin/env python3
"""NumPy reference for the Monte Carlo benchmark: the same model, the same
distributions and the same NPV formula as the Rust engines, vectorized.

Usage: numpy_mc.py MODEL.json PATHS [SEED]
Prints one JSON line: paths, drivers, seconds, samples_per_second, mean, p50.
"""
import json
import sys
import time

import numpy as np


def ramp_discount_weights(model):
    rate = model["discount_rate"]
    months = np.arange(1, model["horizon_months"] + 1, dtype=np.float64)
    discount = (1.0 + rate) ** (-months / 12.0)
    weights = []
    for driver in model["drivers"]:
        ramp_months = driver.get("ramp_months", 0)
        ramp = np.ones_like(months) if ramp_months == 0 else np.minimum(1.0, months / ramp_months)
        weights.append(driver["unit_value"] * float(np.sum(ramp * discount)))
    base = -model["costs"]["one_off"] - model["costs"]["monthly"] * float(np.sum(discount))
    return base, np.array(weights)


def draw(rng, quantity, n):
    kind = quantity["dist"]
    if kind == "fixed":
        return np.full(n, quantity["value"])
    if kind == "normal":
        return rng.normal(quantity["mean"], quantity["sd"], n)
    if kind == "lognormal":
        mean, sd = quantity["mean"], quantity["sd"]
        sigma2 = np.log(1.0 + (sd / mean) ** 2)
        return rng.lognormal(np.log(mean) - sigma2 / 2.0, np.sqrt(sigma2), n)
    if kind == "triangular":
        return rng.triangular(quantity["min"], quantity["mode"], quantity["max"], n)
    if kind == "pert":
        low, mode, high = quantity["min"], quantity["mode"], quantity["max"]
        span = high - low
        alpha = 1.0 + 4.0 * (mode - low) / span
        beta = 1.0 + 4.0 * (high - mode) / span
        return low + span * rng.beta(alpha, beta, n)
    if kind == "uniform":
        return rng.uniform(quantity["min"], quantity["max"], n)
    if kind == "bernoulli":
        return np.where(rng.random(n) < quantity["p"], quantity["impact"], 0.0)
    raise ValueError(f"unknown distribution {kind}")


def main():
    model = json.load(open(sys.argv[1]))
    paths = int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    base, weights = ramp_discount_weights(model)
    chunk = 1_000_000
    npv = np.empty(paths)
    for start in range(0, paths, chunk):
        n = min(chunk, paths - start)
        total = np.full(n, base)
        for weight, driver in zip(weights, model["drivers"]):
            total += weight * draw(rng, driver["quantity"], n)
        npv[start:start + n] = total
    mean = float(np.mean(npv))
    p50 = float(np.percentile(npv, 50))
    seconds = time.perf_counter() - started
    drivers = len(model["drivers"])
    print(json.dumps({
        "paths": paths, "drivers": drivers, "seconds": seconds,
        "samples_per_second": paths * drivers / seconds, "mean": mean, "p50": p50,
    }))


if __name__ == "__main__":
    main()
