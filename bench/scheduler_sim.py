"""How close each MOP scheduling policy comes to the lower bound, in simulation.

Runs the real scheduler (``cerebro.scheduler``) in virtual time (``cerebro.simulate``) over a
seeded grid of scenarios: 8-64 workers, 16-256 models whose sizes vary 1-10x, with and
without a straggler worker, and prints makespan / lower bound per scenario and per policy
(mean and worst). Pure Python, no GPU, about a minute.

Variants ``+next`` also queue each busy worker's next hop (``Scheduler.assign_next``), as
the fit loop does. ``--latency`` adds the controller's round trip: the virtual time from a
decision until its hop can start (a queued hop waits only for the hop ahead of it). Hop
costs are 1-10 per train hop, so a latency of 0.05 is 0.5-5% of one.

    python bench/scheduler_sim.py                 # the full grid, no latency
    python bench/scheduler_sim.py --latency 0.05  # each decision reaches its worker late
    python bench/scheduler_sim.py --quick         # a smaller grid, a few seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cerebro.scheduler import POLICIES  # noqa: E402
from cerebro.simulate import make_scenario, simulate  # noqa: E402

# "lrf/unit": lrf without cost estimates (cost 1 per hop), as a controller starts out;
# "+next": with next hops queued behind running ones (what `run_fit` does).
VARIANTS = (*POLICIES, "lrf/unit", "fixed+next", "lrf+next")


def run(quick: bool, latency: float = 0.0) -> dict:
    workers = (8, 16) if quick else (8, 16, 32, 64)
    models = (16, 64) if quick else (16, 64, 256)
    stragglers = (1.0, 1.5)
    rows = []
    for w in workers:
        for m in models:
            for straggler in stragglers:
                seed = 1000 * w + m + int(10 * straggler)
                sc = make_scenario(
                    num_workers=w,
                    num_models=m,
                    num_epochs=2,
                    size_range=(1.0, 10.0),
                    straggler=straggler,
                    jitter=0.1,
                    seed=seed,
                )
                ratios = {}
                for v in VARIANTS:
                    name, _, queue = v.partition("+")
                    policy, _, unit = name.partition("/")
                    r = simulate(
                        sc.scheduler(policy, use_cost=not unit),
                        sc.duration,
                        latency=latency,
                        lookahead=bool(queue),
                    )
                    ratios[v] = r.ratio
                rows.append(
                    {"workers": w, "models": m, "straggler": straggler, "seed": seed, **ratios}
                )
                cells = "  ".join(f"{ratios[v]:>10.3f}" for v in VARIANTS)
                print(f"{w:>7} {m:>6} {straggler:>9.1f}  {cells}", flush=True)
    summary = {
        v: {"mean": statistics.mean(r[v] for r in rows), "worst": max(r[v] for r in rows)}
        for v in VARIANTS
    }
    return {"latency": latency, "scenarios": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="decision-to-start delay (default 0)"
    )
    args = parser.parse_args()
    print(
        f"makespan / lower bound (1.000 = optimal); latency {args.latency}; 2 epochs, "
        "1 train + 1 val partition"
    )
    print(
        f"per worker, sizes 1-10x, jitter 10%\n{'workers':>7} {'models':>6} {'straggler':>9}  "
        + "  ".join(f"{v:>10}" for v in VARIANTS)
    )
    start = time.perf_counter()
    result = run(args.quick, args.latency)
    print(f"\n{'policy':<10} {'mean':>6} {'worst':>6}")
    for v, s in result["summary"].items():
        print(f"{v:<10} {s['mean']:>6.3f} {s['worst']:>6.3f}")
    print(f"({len(result['scenarios'])} scenarios, {time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
