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
    python bench/scheduler_sim.py --traces bench/results/traces/*.json
    python bench/scheduler_sim.py --from-json bench/results/scheduler_sim.json \
        bench/results/scheduler_sim-latency.json --plot bench/results/scheduler_sim.png

``--plot`` draws makespan / lower bound per policy and scenario, and by cluster size,
against the targets (``_simplot.py``); with ``--from-json`` it redraws saved results
without simulating again.

``--walks`` measures what fixed walks independent of the workers cost (NOTE [ Walks
independent of the workers ]): ``fixed+next`` with P = W, 2W and 4W train partitions (and as
many val partitions), against the same lower bound, next to the old walk that depended on
the workers.

``--traces`` replays real fits instead: each hop takes the time it took in a recorded fit
(a trace: what ``bench/suite.py`` stores with each Cerebro run, or a run's
``catalog.sqlite``), with the latency that fit's median gap between hops, under 20
scheduler seeds. Besides the policies it shows ``fixed+next (work only)``: ``fixed``
ranking its models by remaining work alone, without NOTE [ Validation first ].
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _hops import hop_trace  # noqa: E402  (bench/, this script's folder)
from _simplot import plot_ratios  # noqa: E402

from cerebro.scheduler import POLICIES, Hop, Scheduler  # noqa: E402
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


def walks(quick: bool) -> dict:
    """Makespan / lower bound of ``fixed+next`` for P = W, 2W, 4W partitions, for the walk
    of (seed, model, epoch) only and the old walk that depended on the workers."""
    workers = (8, 16) if quick else (8, 16, 32, 64)
    models = (16, 64) if quick else (16, 64, 256)
    rows = []
    for w in workers:
        for m in models:
            for per in (1, 2, 4):
                for straggler in (1.0, 1.5):
                    seed = 1000 * w + m + int(10 * straggler) + 7 * per
                    sc = make_scenario(
                        num_workers=w,
                        num_models=m,
                        train_per_worker=per,
                        val_per_worker=per,
                        straggler=straggler,
                        seed=seed,
                    )
                    ratios = {
                        f"walk={walk}": simulate(
                            sc.scheduler("fixed", walk=walk), sc.duration, lookahead=True
                        ).ratio
                        for walk in ("partitions", "workers")
                    }
                    rows.append(
                        {"workers": w, "models": m, "P": per * w,
                         "straggler": straggler, **ratios}
                    )  # fmt: skip
                    print(
                        f"{w:>7} {m:>6} {per * w:>5} {straggler:>9.1f}  "
                        f"{ratios['walk=partitions']:>10.3f} {ratios['walk=workers']:>10.3f}",
                        flush=True,
                    )
    summary = {
        walk: {
            "mean": statistics.mean(r[walk] for r in rows),
            "worst": max(r[walk] for r in rows),
            "mean_by_P": {
                f"{k}W": statistics.mean(r[walk] for r in rows if r["P"] == k * r["workers"])
                for k in (1, 2, 4)
            },
        }
        for walk in ("walk=partitions", "walk=workers")
    }
    return {"scenarios": rows, "summary": summary}


class _WorkOnly(Scheduler):
    """``fixed`` ranking models by remaining work alone (before NOTE [ Validation first ])."""

    def _top(self, cands: dict[int, None]) -> list[int]:
        return self._most_work(cands)


def load_traces(paths: list[Path]) -> list[tuple[str, dict]]:
    """``(name, trace)`` from trace JSON files, suite result files, or catalogs."""
    out = []
    for path in paths:
        if path.suffix == ".sqlite":
            out.append((str(path), hop_trace(path)))
            continue
        data = json.loads(path.read_text())
        if "hops" in data:
            out.append((path.name, data))
        for wl, res in data.get("workloads", {}).items():
            for runner, r in res.get("results", {}).items():
                if isinstance(r, dict) and isinstance(r.get("trace"), dict):
                    out.append((f"{path.name}:{wl}:{runner}", r["trace"]))
    return out


TRACE_VARIANTS = ("fixed", "fixed+next", "fixed+next (work only)", "lrf", "lrf+next")


def replay(traces: list[tuple[str, dict]], seeds: int = 20) -> dict:
    """Makespan / lower bound of each variant on each trace (mean and worst over seeds)."""
    rows = []
    for name, t in traces:
        durations = {Hop(m, e, k, p): sec for m, e, k, p, sec in t["hops"]}
        models = sorted({h.model_id for h in durations})
        latency = max(0.0, t.get("gap_s_median", 0.0))
        ratios: dict[str, list[float]] = {}
        for v in TRACE_VARIANTS:
            policy, _, queue = v.partition("+")
            cls = _WorkOnly if "work only" in v else Scheduler
            for seed in range(seeds):
                sched = cls(
                    models,
                    num_epochs=t["epochs"],
                    train_owner={int(p): w for p, w in t["train_owner"].items()},
                    val_owner={int(p): w for p, w in t["val_owner"].items()},
                    policy=policy,
                    seed=seed,
                )
                r = simulate(
                    sched,
                    lambda h, w, d=durations: d[h],
                    latency=latency,
                    lookahead=bool(queue),
                )
                ratios.setdefault(v, []).append(r.ratio)
        row = {
            "trace": name,
            "latency_s": latency,
            **{v: {"mean": statistics.mean(x), "worst": max(x)} for v, x in ratios.items()},
        }
        rows.append(row)
        cells = "  ".join(f"{row[v]['mean']:>7.4f}/{row[v]['worst']:.4f}" for v in TRACE_VARIANTS)
        print(f"{name[-40:]:<40} {1000 * latency:>5.2f}  {cells}", flush=True)
    return {"traces": rows, "seeds": seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="decision-to-start delay (default 0)"
    )
    parser.add_argument(
        "--traces", type=Path, nargs="+", help="replay these recorded fits instead (see above)"
    )
    parser.add_argument("--plot", type=Path, help="also draw the ratios into this PNG")
    parser.add_argument(
        "--walks", action="store_true", help="fixed walks for P = W, 2W, 4W partitions"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="draw (--plot) results saved by --json instead of simulating",
    )
    args = parser.parse_args()
    if args.traces and args.plot:
        parser.error("--plot draws the synthetic grid's results; it does not take --traces")
    if args.from_json:
        if not args.plot:
            parser.error("--from-json only redraws saved results: give --plot PNG too")
        saved = []
        for path in args.from_json:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                parser.error(f"cannot read {path}: {e}")
            if "scenarios" not in data or "summary" not in data:
                parser.error(f"{path} holds no synthetic-grid results (saved by --json)")
            saved.append((f"latency {data.get('latency', 0.0)}", data))
        print(f"wrote {plot_ratios(saved, args.plot)}")
        return
    if args.walks:
        print(
            "makespan / lower bound of fixed+next, 2 epochs, sizes 1-10x, jitter 10%\n"
            f"{'workers':>7} {'models':>6} {'P':>5} {'straggler':>9}  "
            f"{'walk(P)':>10} {'walk(W)':>10}"
        )
        result = walks(args.quick)
        for walk, s in result["summary"].items():
            by = "  ".join(f"P={k}: {v:.3f}" for k, v in s["mean_by_P"].items())
            print(f"{walk:<10} mean {s['mean']:.3f} worst {s['worst']:.3f}  ({by})")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return
    if args.traces:
        traces = load_traces(args.traces)
        if not traces:
            parser.error("no traces found in those files")
        print(
            "makespan / lower bound (1.000 = optimal), mean/worst over 20 scheduler seeds\n"
            f"{'trace':<40} {'lat ms':>5}  " + "  ".join(f"{v:>15}" for v in TRACE_VARIANTS)
        )
        result = replay(traces)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return
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
    if args.plot:
        print(f"wrote {plot_ratios([(f'latency {args.latency}', result)], args.plot)}")


if __name__ == "__main__":
    main()
