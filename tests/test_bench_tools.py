"""The benchmark scripts' own logic: the scheduler simulation's figure, its argument checks,
the GPU benchmark's busy-% windowing and refusals (no GPU is needed for any of them), and
the search benchmark's ratios and targets (no run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cerebro.simulate import make_scenario, simulate

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_path() -> object:
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


def _sim_result() -> dict:
    """A small synthetic-grid result in the form ``scheduler_sim.py --json`` saves."""
    rows = []
    for workers in (2, 4):
        for straggler in (1.0, 1.5):
            sc = make_scenario(
                num_workers=workers,
                num_models=6,
                num_epochs=1,
                size_range=(1.0, 4.0),
                straggler=straggler,
                seed=workers,
            )
            ratios = {p: simulate(sc.scheduler(p), sc.duration).ratio for p in ("fixed", "lrf")}
            rows.append({"workers": workers, "models": 6, "straggler": straggler, **ratios})
    summary = {
        p: {"mean": sum(r[p] for r in rows) / len(rows), "worst": max(r[p] for r in rows)}
        for p in ("fixed", "lrf")
    }
    return {"latency": 0.0, "scenarios": rows, "summary": summary}


def test_plot_ratios_writes_a_png(bench_path: object, tmp_path: Path) -> None:
    from _simplot import plot_ratios

    result = _sim_result()
    assert all(r["fixed"] >= 1.0 - 1e-9 for r in result["scenarios"])  # never below the bound
    out = plot_ratios([("latency 0", result), ("again", result)], tmp_path / "f" / "sim.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "scheduler_sim.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_scheduler_sim_redraws_saved_results(tmp_path: Path) -> None:
    saved = tmp_path / "sim.json"
    saved.write_text(json.dumps(_sim_result()))
    png = tmp_path / "sim.png"
    proc = _sim("--from-json", str(saved), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_scheduler_sim_refuses_what_it_cannot_draw(tmp_path: Path) -> None:
    saved = tmp_path / "sim.json"
    saved.write_text(json.dumps(_sim_result()))
    proc = _sim("--from-json", str(saved))
    assert proc.returncode == 2 and "give --plot PNG too" in proc.stderr
    traces = tmp_path / "trace.json"
    traces.write_text(json.dumps({"hops": []}))
    proc = _sim("--from-json", str(traces), "--plot", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "holds no synthetic-grid results" in proc.stderr
    proc = _sim("--from-json", str(tmp_path / "missing.json"), "--plot", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    proc = _sim("--traces", str(traces), "--plot", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "does not take --traces" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_gpu_busy_is_averaged_over_the_window_per_gpu(bench_path: object) -> None:
    from gpu import GpuSampler

    s = GpuSampler()
    s.samples = [
        (0.5, 0, 100.0, 900.0),  # before the window
        (1.0, 0, 20.0, 1000.0),
        (1.0, 1, 80.0, 3000.0),
        (1.5, 0, 40.0, 1200.0),
        (1.5, 1, 60.0, 2500.0),
        (2.5, 0, 100.0, 9000.0),  # after it
    ]
    got = s.busy([1.0, 2.0], [0, 1])
    assert got["busy_pct_per_gpu"] == {"0": 30.0, "1": 70.0}
    assert got["busy_pct"] == 50.0 and got["memory_mib_peak"] == 3000.0
    assert got["samples"] == 4
    only0 = s.busy([1.0, 2.0], [0])
    assert only0["busy_pct"] == 30.0 and only0["memory_mib_peak"] == 1200.0
    empty = s.busy([5.0, 6.0], [0])
    assert empty["busy_pct"] is None and empty["memory_mib_peak"] is None


def test_gpu_bench_refuses_without_a_gpu(bench_path: object, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import gpu

    with pytest.raises(SystemExit, match="no CUDA device is visible to torch"):
        gpu._devices("cuda")
    assert gpu._devices("cpu") == 1
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no nvidia-smi on this PATH
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "nvidia-smi is not on PATH" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu.py"), "--runners", "cerebro,nope", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown runners ['nope']" in proc.stderr


def _search_runs(walls: list[float], bests: list[float]) -> list[dict]:
    return [
        {"wall_s": w, "best": {"val_acc": b}, "models": 24, "epochs": 72}
        for w, b in zip(walls, bests, strict=True)
    ]


def test_search_peers_ratios_are_side_by_side_and_targets_judge_them(bench_path: object) -> None:
    from search_peers import aggregate, ratios, table, targets

    agg = {
        "cerebro_tpe": aggregate(_search_runs([10.0, 30.0, 12.0], [0.970, 0.972, 0.968])),
        "optuna1": aggregate(_search_runs([40.0, 40.0, 40.0], [0.975, 0.971, 0.973])),
        "optuna2": aggregate(_search_runs([20.0, 20.0, 10.0], [0.970, 0.970, 0.970])),
        "ray": aggregate(_search_runs([20.0, 50.0, 30.0], [0.97, 0.97, 0.97])),
    }
    assert agg["cerebro_tpe"]["wall_s"] == 12.0  # the median round
    r = ratios(agg, "cerebro_tpe")
    assert r["ray"]["each"] == [0.5, 0.6, 0.4]  # round by round, not medians over medians
    assert r["ray"]["median"] == 0.5 and r["optuna2"]["median"] == 1.2
    got = {t["target"].split(" (")[0]: t for t in targets(agg)}
    assert [t["met"] for t in got.values()] == [True, False, True]
    acc = next(t for t in got.values() if "noise" in t["target"])
    assert acc["value"] == pytest.approx(0.973 - 0.970)  # the gap of the means
    assert acc["limit"] == pytest.approx(0.005)  # the floor: both spreads are 0.004
    lines = table(agg)
    assert any("0.500" in line and "(0.500, 0.600, 0.400)" in line for line in lines)
    assert targets({"ray": agg["ray"]}) == []  # no Cerebro run: nothing to judge
