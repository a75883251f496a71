"""Simulator benchmarks: speed (simulated requests per second of wall time)
and policy quality (hit ratio of the mesh's LRU against Belady's MIN).

Speed: the zipf-1k-models scenario's requests are written to a CSV trace of
``--requests`` lines (default 1,000,000), read back, and replayed through
the engine at three configurations: 8 pods × 24 GiB (≈93 % hits), 16 pods ×
24 GiB (≈99 % hits) and 8 pods × 24 GiB with ``mesh.concurrency`` (one heap
event per request).  Engine wall time only, median of ``--repeats``; trace
writing/reading and the baselines are timed separately.  Target ≥ 200,000/s.

Policy quality: 1,000 models (lognormal sizes, median 100 MiB, σ 0.5),
Zipf α ∈ {0.8, 1.0, 1.2}, ``--quality-requests`` Poisson requests each, cache
= 5/10/20/40 % of the population's bytes.  Per point: Belady MIN (farthest
next use, forced admission; pooled), the mesh's SizeAwareLRU pooled (same
capacity, instant loads), and the full mesh simulation on 4 pods of a
quarter each (near-instant loads, default copy scaling).  Ratios ÷ Belady;
target ≥ 0.9.  Two policies the mesh does NOT run (GDSF, LRU-2; pooled) show
what a different eviction policy would gain.

Usage: python benchmarks/bench_sim.py [--requests 1000000] [--repeats 3]
       [--quality-requests 200000] [--skip-speed] [--skip-quality]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sim.alternatives import gdsf_hits, lru2_hits
from sim.baselines import belady_hits, lru_hits
from sim.engine import simulate
from sim.scenario import load_scenario, parse_scenario
from sim.stats import summarize
from sim.trace import write_trace
from sim.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "sim" / "scenarios" / "zipf-1k-models.yaml"


def speed(n_requests: int, repeats: int) -> None:
    source = load_scenario(SCENARIO)
    duration = n_requests / source.traffic.rate * 1.02  # a little over, then cut to exactly n
    t0 = time.perf_counter()
    generated = load_workload(source.model_copy(update={"traffic": source.traffic.model_copy(update={"duration_s": duration})}))
    gen_s = time.perf_counter() - t0
    pop = generated.population
    n = min(n_requests, len(generated))
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = Path(tmp) / "trace.csv"
        t0 = time.perf_counter()
        write_trace(trace_path, (generated.times_ms[:n] / 1000).tolist(),
                    (pop.ids[k] for k in generated.model_index[:n].tolist()), dict(zip(pop.ids, pop.sizes.tolist())))
        write_s = time.perf_counter() - t0
        base = {
            "seed": 1,
            "runtimes": {"_default": {"load_fixed_ms": 100, "bandwidth": "2GiB"}},
            "trace": {"path": str(trace_path), "time_unit": "s", "default_type": "onnx", "inference_ms": {"median": 5, "sigma": 0.4}},
        }
        configs = [
            ("8 pods x 24GiB", {"pods": [{"count": 8, "memory": "24GiB"}], "mesh": {"max_loading_concurrency": 4}}),
            ("16 pods x 24GiB", {"pods": [{"count": 16, "memory": "24GiB"}], "mesh": {"max_loading_concurrency": 4}}),
            ("8 pods x 24GiB, concurrency", {"pods": [{"count": 8, "memory": "24GiB"}],
                                             "mesh": {"max_loading_concurrency": 4, "concurrency": True}}),
        ]
        t0 = time.perf_counter()
        replay = load_workload(parse_scenario({**base, **configs[0][1]}))
        read_s = time.perf_counter() - t0
    print(f"simulator speed: {len(replay):,}-request trace (zipf-1k-models requests), engine wall time, median of {repeats}")
    print(f"  generate {len(generated):,} requests {gen_s:.2f} s, write CSV {write_s:.2f} s, read CSV {read_s:.2f} s "
          f"({len(replay) / read_s:,.0f} lines/s)")
    for label, config in configs:
        scenario = parse_scenario({**base, **config})
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = simulate(scenario, replay)
            walls.append(time.perf_counter() - t0)
        s = summarize(label, result)
        wall = statistics.median(walls)
        print(f"  {label:<30} {len(replay) / wall:>10,.0f} req/s  (target >= 200,000)  wall {wall:.2f} s "
              f"[{', '.join(f'{w:.2f}' for w in walls)}]  hit ratio {s.hit_ratio:.4f}  cold starts/s {s.cold_starts_per_s:.2f}")
    capacity = 8 * (24 << 30)
    t0 = time.perf_counter()
    belady_hits(replay.model_index, replay.population.sizes, capacity)
    belady_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lru_hits(replay.model_index, replay.population.ids, replay.population.sizes, capacity)
    lru_s = time.perf_counter() - t0
    print(f"  baselines on the same trace: Belady {len(replay) / belady_s:,.0f} req/s, pooled LRU {len(replay) / lru_s:,.0f} req/s")


def quality(n_requests: int) -> None:
    print(f"policy quality: hit ratio ÷ Belady MIN (pooled), 1,000 models (lognormal median 100MiB, sigma 0.5), "
          f"{n_requests:,} requests per alpha")
    header = (f"  {'alpha':>5} {'cache':>6} {'Belady':>7} {'LRU':>7} {'mesh4':>7} {'LRU/B':>6} {'mesh/B':>6}   "
              f"not the mesh: {'GDSF':>6} {'/B':>5} {'LRU-2':>6} {'/B':>5}")
    print(header)
    for alpha in (0.8, 1.0, 1.2):
        doc = {
            "seed": 1,
            "pods": [{"count": 4, "memory": "1GiB"}],
            "runtimes": {"_default": {"load_fixed_ms": 0, "bandwidth": "1PiB"}},
            "models": [{"count": 1000, "size": {"median": "100MiB", "sigma": 0.5}}],
            "traffic": {"rate": 1000, "duration_s": n_requests / 1000, "zipf_alpha": alpha},
        }
        probe = parse_scenario({**doc, "pods": [{"count": 4, "memory": "1TiB"}]})
        workload = load_workload(probe)
        pop = workload.population
        n = len(workload)
        for fraction in (0.05, 0.10, 0.20, 0.40):
            capacity = int(pop.total_bytes * fraction)
            pod_memory = max(capacity // 4, int(pop.sizes.max()))
            mesh = summarize("q", simulate(parse_scenario({**doc, "pods": [{"count": 4, "memory": pod_memory}]}), workload))
            belady = belady_hits(workload.model_index, pop.sizes, capacity) / n
            lru = lru_hits(workload.model_index, pop.ids, pop.sizes, capacity) / n
            gdsf = gdsf_hits(workload.model_index, pop.sizes, capacity) / n
            lru2 = lru2_hits(workload.model_index, pop.sizes, capacity) / n
            print(f"  {alpha:>5} {fraction:>6.0%} {belady:>7.3f} {lru:>7.3f} {mesh.hit_ratio:>7.3f} "
                  f"{lru / belady:>6.3f} {mesh.hit_ratio / belady:>6.3f}   {'':>14}{gdsf:>6.3f} {gdsf / belady:>5.3f} "
                  f"{lru2:>6.3f} {lru2 / belady:>5.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-requests", type=int, default=200_000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    if not args.skip_speed:
        speed(args.requests, args.repeats)
    if not args.skip_quality:
        quality(args.quality_requests)


if __name__ == "__main__":
    main()
