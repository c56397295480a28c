"""W2 on GPUs: Cerebro (one worker per GPU) against the plain PyTorch loop, with how busy
``nvidia-smi`` saw each GPU while each of them trained.

Runners, each in a fresh Python process, one after another:

  cerebro         Cerebro MOP, local engine, one worker per GPU (the ``run_fit`` call on
                  started workers; minibatches are copied to the GPU one at a time)
  cerebro_x2      the same with two workers per GPU (two processes feeding each GPU)
  plain           plain PyTorch loop on one GPU, configs one after another, each minibatch
                  copied to the GPU as it is used (what Cerebro's workers do)
  plain_resident  the same with the whole data set copied to the GPU before the clock starts

GPU busy % is nvidia-smi's ``utilization.gpu`` (the share of each sample period in which a
kernel ran), sampled every 100 ms and averaged over the runner's timed window, per GPU it
used; for Cerebro also over its steady state (first hop to the end of the fit). Validation
accuracy is checked against the plain loop as in ``suite.py``.

Usage::

    python bench/gpu.py                          # W2 on every GPU -> bench/results/gpu.json
    python bench/gpu.py --quick                  # the suite's quick W2 grid
    python bench/gpu.py --device cpu --quick     # the same code on the CPU, no busy %
                                                 # (checks the script on a machine without GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _workloads import Workload, workloads  # noqa: E402
from suite import _acc_stats, _f  # noqa: E402  (the suite's accuracy figures and cells)

RESULTS = BENCH / "results"
RUNNERS = ("cerebro", "cerebro_x2", "plain", "plain_resident")
SAMPLE_MS = 100


# --- the runners (in a child process) ---------------------------------------------------------


def _devices(device: str) -> int:
    """How many devices the runners spread over: every GPU, or (``cpu``) one."""
    import torch

    if device == "cpu":
        return 1
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise SystemExit(
            "no CUDA device is visible to torch: run this on a machine with a GPU and a "
            "CUDA build of torch, or pass --device cpu to check the script on the CPU"
        )
    return n


def run_runner(runner: str, wl: Workload, seed: int, device: str) -> dict[str, Any]:
    """One runner; its result dict with ``wall_s``, ``val_acc`` and the timed ``fit_window``."""
    import torch
    from _plain import run_plain
    from _runners import run_cerebro

    n = _devices(device)
    if runner.startswith("cerebro"):
        per = 2 if runner == "cerebro_x2" else 1
        r = run_cerebro(wl, seed, workers=n * per)
        start, end = r["fit_window"]
        r["steady_window"] = [start + r["hops"]["first_hop_s"], end]
        r.pop("trace", None)
    else:
        data = wl.tensors()
        dev = "cpu" if device == "cpu" else "cuda:0"
        wall, results = run_plain(
            wl.module,
            wl.configs(),
            data["train"],
            data["val"],
            wl.epochs,
            threads=torch.get_num_threads(),
            seed=seed,
            device=dev,
            resident=runner == "plain_resident",
        )
        end = time.time()
        r = {
            "wall_s": wall,
            "val_acc": [x.val_acc for x in results],
            "config_s": [x.wall_s for x in results],
            "workers": 1,
            "fit_window": [end - wall, end],
        }
    r["device_names"] = (
        ["cpu"] if device == "cpu" else [torch.cuda.get_device_name(i) for i in range(n)]
    )
    r["gpus_used"] = [] if device == "cpu" else list(range(1 if runner.startswith("plain") else n))
    return r


def child_main(argv: list[str]) -> None:
    """``RUNNER QUICK(0|1) SEED DEVICE OUT.json``."""
    runner, quick, seed, device, out = argv[0], argv[1] == "1", int(argv[2]), argv[3], argv[4]
    wl = workloads(quick)["W2"]
    wl.tensors_file()  # the data, once, before any clock starts
    Path(out).write_text(json.dumps(run_runner(runner, wl, seed, device)))


# --- nvidia-smi -------------------------------------------------------------------------------


class GpuSampler:
    """``nvidia-smi`` polled every ``SAMPLE_MS`` in the background: ``(time, gpu, busy %,
    memory MiB)`` rows, stamped with this machine's clock as each line arrives."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        query = "--query-gpu=index,utilization.gpu,memory.used"
        self._proc = subprocess.Popen(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", f"-lms={SAMPLE_MS}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                idx, busy, mem = int(parts[0]), float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                continue  # "[N/A]" or a partial line
            self.samples.append((time.time(), idx, busy, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def busy(self, window: list[float], gpus: list[int]) -> dict[str, Any]:
        """Mean busy % per GPU over ``window`` (and their mean), and peak memory."""
        t0, t1 = window
        per: dict[str, float] = {}
        mem = 0.0
        for g in gpus:
            mine = [s for s in self.samples if s[1] == g and t0 <= s[0] <= t1]
            if mine:
                per[str(g)] = statistics.fmean(s[2] for s in mine)
                mem = max(mem, max(s[3] for s in mine))
        return {
            "busy_pct": statistics.fmean(per.values()) if per else None,
            "busy_pct_per_gpu": per,
            "memory_mib_peak": mem if per else None,
            "samples": sum(1 for s in self.samples if t0 <= s[0] <= t1),
        }


# --- the parent -------------------------------------------------------------------------------


def run_child(runner: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """One runner in a fresh interpreter, sampled by nvidia-smi on a GPU."""
    out, log = log_dir / f"{runner}.json", log_dir / f"{runner}.log"
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import gpu; gpu.child_main(sys.argv[1:])"
    )
    cmd = [
        sys.executable,
        "-c",
        code,
        runner,
        str(int(args.quick)),
        str(args.seed),
        args.device,
        str(out),
    ]
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # Cerebro's workers pick the GPUs when they see them
    sampler = GpuSampler() if args.device != "cpu" else None
    t0 = time.perf_counter()
    with open(log, "w") as f, sampler or contextlib.nullcontext():
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(
            f"runner {runner} failed (exit {proc.returncode}):\n{log.read_text()[-4000:]}"
        )
    r: dict[str, Any] = json.loads(out.read_text())
    r["process_s"] = time.perf_counter() - t0
    if sampler is not None:
        r["gpu"] = sampler.busy(r["fit_window"], r["gpus_used"])
        if "steady_window" in r:
            r["gpu_steady"] = sampler.busy(r["steady_window"], r["gpus_used"])
    return r


def figures(wl: Workload, res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios to the plain loop, busy %, and the accuracy check against the plain loop."""
    n = len(wl.configs())
    ref = res.get("plain")
    ref_acc = _acc_stats(ref["val_acc"]) if ref else None
    rows: dict[str, Any] = {}
    failures: list[str] = []
    for name, r in res.items():
        acc = _acc_stats(r["val_acc"])
        rows[name] = {
            "wall_s": r["wall_s"],
            "over_plain": r["wall_s"] / ref["wall_s"] if ref else None,
            "busy_pct": (r.get("gpu") or {}).get("busy_pct"),
            "busy_pct_steady": (r.get("gpu_steady") or {}).get("busy_pct"),
            "memory_mib_peak": (r.get("gpu") or {}).get("memory_mib_peak"),
            **acc,
        }
        if acc["configs_done"] != n:
            failures.append(f"{name}: {acc['configs_done']} of {n} configs finished")
        elif ref_acc is not None and ref_acc["configs_done"]:
            for key in ("val_acc_mean", "val_acc_best"):
                if abs(acc[key] - ref_acc[key]) > wl.acc_tolerance:
                    failures.append(f"{name}: {key} {acc[key]:.4f} vs {ref_acc[key]:.4f} (plain)")
    return {"runners": rows, "accuracy_failures": failures, "accuracy_tolerance": wl.acc_tolerance}


def print_table(wl: Workload, fig: dict[str, Any], res: dict[str, dict[str, Any]]) -> None:
    names = next(iter(res.values()))["device_names"]
    print(f"\n=== W2 on {', '.join(names)}: {wl.title} ===")
    head = (
        f"{'runner':<16} {'wkrs':>4} {'wall s':>7} {'/plain':>6} {'busy %':>6} {'steady':>6} "
        f"{'MiB':>7} {'acc mean':>8} {'best':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, row in fig["runners"].items():
        print(
            f"{name:<16} {res[name]['workers']:>4} {_f(row['wall_s'], '.2f', 7)} "
            f"{_f(row['over_plain'], '.2f', 6)} {_f(row['busy_pct'], '.1f', 6)} "
            f"{_f(row['busy_pct_steady'], '.1f', 6)} {_f(row['memory_mib_peak'], '.0f', 7)} "
            f"{_f(row['val_acc_mean'], '.4f', 8)} {_f(row['val_acc_best'], '.4f', 6)}"
        )
    for name in res:
        hops = res[name].get("hops")
        if hops and "share" in hops:
            print(
                f"{name}: hop overhead {hops['mechanism_share']:.1%} without stalls, "
                f"{hops['share']:.1%} with; first hop after {hops['first_hop_s']:.2f} s"
            )
    for failure in fig["accuracy_failures"]:
        print(f"ACCURACY CHECK FAILED: {failure}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick W2 grid (1 epoch)")
    ap.add_argument("--runners", default=",".join(RUNNERS), help=f"comma list of {RUNNERS}")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default results/gpu*.json)")
    args = ap.parse_args(argv)
    chosen = [r.strip() for r in args.runners.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(RUNNERS))
    if unknown:
        ap.error(f"unknown runners {unknown}; choose from {', '.join(RUNNERS)}")
    if args.device == "cuda" and shutil.which("nvidia-smi") is None:
        ap.error("nvidia-smi is not on PATH: run on a GPU machine, or --device cpu")
    wl = workloads(args.quick)["W2"]
    wl.tensors_file()
    log_dir = Path(tempfile.mkdtemp(prefix="cerebro-gpu-bench-"))
    res: dict[str, dict[str, Any]] = {}
    for runner in chosen:
        print(f"{runner} ...", end=" ", flush=True)
        res[runner] = run_child(runner, args, log_dir)
        print(f"{res[runner]['wall_s']:.2f} s", flush=True)
    fig = figures(wl, res)
    print_table(wl, fig, res)
    import torch

    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "device": args.device,
        "quick": args.quick,
        "figures": fig,
        "results": res,
    }
    suffix = "-quick" if args.quick else ""
    out = args.out or RESULTS / f"gpu{'-cpu' if args.device == 'cpu' else ''}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out}; logs in {log_dir}")
    return 1 if fig["accuracy_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
