"""What one Cerebro hop costs outside the user's code, piece by piece (a profile aid).

For each suite workload, with its largest config, this times (median of many repeats, one
thread, in this process unless said otherwise) each fixed cost a hop or a fit pays, next
to the compute it wraps:

* the user's work: one ``train`` step and one ``valtest`` step, and so a whole train or
  val hop (steps per partition x step time, 2 workers);
* loading a model (``build_model``'s parts): ``torch.load`` of its checkpoint (as a
  worker writes it), seeding the RNG (``seed_torch``), ``create_model_components``,
  ``load_state_dict``;
* saving it (``save_checkpoint``: state dicts, packing, ``torch.save`` to a temp name,
  ``os.replace``), on the disk the run directory is on and, for comparison, on tmpfs
  (``/dev/shm``);
* one minibatch cut from a memory-mapped partition (``Partition.batch``), and a train
  hop's minibatches cut between train steps, one by one and gathered together
  (``Partition.batches``);
* the controller-worker round trip of an empty call (``engine._process.Child``), the
  floor of the gap between two hops;
* starting a worker process to the end of ``setup_worker`` (imports, the optimizer
  warm-up), and closing it (interpreter exit).

    python bench/hop_costs.py            # both workloads (about a minute)
    python bench/hop_costs.py --only W2

Results go to ``bench/results/hop_costs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from _workloads import Workload, workloads  # noqa: E402

RESULTS = BENCH / "results"


def _ms(
    fn: Callable[[], Any], repeat: int = 100, before: Callable[[], Any] | None = None
) -> float:
    """Median wall milliseconds of ``fn()`` after one untimed call; ``before()`` runs,
    untimed, before each call."""
    fn()
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _between_steps(minibatches: Callable[[], Iterator[Any]], step: Callable[[], None]) -> float:
    """Milliseconds spent producing one hop's minibatches with a train step after each
    (the median of nine hops, after one untimed)."""
    hops = []
    for _ in range(10):
        total, it = 0.0, minibatches()
        while True:
            t = time.perf_counter()
            if next(it, None) is None:
                break
            total += time.perf_counter() - t
            step()
        hops.append(total)
    return 1000 * statistics.median(hops[1:])


def _noop(state: dict[str, Any]) -> None:
    return None


def _largest(wl: Workload) -> dict[str, Any]:
    """The config with the most parameters and the smallest batch (most steps per hop)."""
    return max(
        wl.configs(), key=lambda hp: (hp.get("hidden", hp.get("channels")), -hp["batch_size"])
    )


def measure(wl: Workload, run_dir: Path) -> dict[str, Any]:
    from cerebro import Experiment
    from cerebro.allocator import keep_freed_memory
    from cerebro.engine._process import Child
    from cerebro.engine.messages import HopTask
    from cerebro.partitions import Partition, partition_path
    from cerebro.worker import save_checkpoint, seed_torch, setup_worker

    torch.set_num_threads(1)
    keep_freed_memory()  # as a worker does: freed minibatches are reused, not faulted in
    ex = wl.module
    spec = ex.minibatch_spec
    hp = _largest(wl)
    exp = Experiment(wl.params(str(run_dir)), workers=2, verbose=False)
    exp.run_etl(ex.etl_spec, fraction=1.0, seed=1)
    train_part = Partition(partition_path(run_dir / "data", "train", 0))
    val_part = Partition(partition_path(run_dir / "data", "val", 0))
    bs = int(hp["batch_size"])
    comps = spec.create_model_components(dict(hp))
    x, y = train_part.batch(slice(0, bs))
    out: dict[str, Any] = {"config": hp, "rows_per_train_partition": len(train_part)}
    out["train_step_ms"] = _ms(lambda: ex.train_step(comps["model"], comps["optimizer"], x, y))
    out["val_step_ms"] = _ms(lambda: ex.eval_step(comps["model"], x, y))
    steps_t = -(-len(train_part) // bs)
    steps_v = -(-len(val_part) // bs)
    out["train_hop_user_ms"] = steps_t * out["train_step_ms"]
    out["val_hop_user_ms"] = steps_v * out["val_step_ms"]

    task = HopTask(
        model_id="m000",
        hyperparams=hp,
        kind="train",
        partition=0,
        epoch=0,
        in_ckpt=None,
        out_ckpt=None,
        init_seed=1,
        shuffle_seed=1,
    )
    ckpt = run_dir / "models" / "ckpt.pt"
    save_checkpoint(comps, str(ckpt), task)  # exactly as a worker writes it
    out["checkpoint_bytes"] = ckpt.stat().st_size
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    fresh = spec.create_model_components(dict(hp))
    cpu = torch.device("cpu")
    out["load"] = {
        "torch.load": _ms(lambda: torch.load(ckpt, map_location="cpu", weights_only=False)),
        "seed the RNG (worker._seed)": _ms(lambda: seed_torch(1, cpu)),
        "create_model_components": _ms(lambda: spec.create_model_components(dict(hp))),
        "load_state_dict": _ms(
            lambda: [fresh[k].load_state_dict(state["components"][k]) for k in fresh]
        ),
    }

    def save(where: Path) -> float:
        # As in a fit: each train hop writes a new file (step-NNNNN.pt) and the controller,
        # not the worker, deletes the one before. (Renaming over an existing file would
        # time ext4's flush-on-replace, which no hop pays.)
        written: list[Path] = []

        def go() -> None:
            written.append(where / f"step-{len(written):05d}.pt")
            save_checkpoint(comps, str(written[-1]), task)

        def tidy() -> None:
            if len(written) > 1:
                written[-2].unlink(missing_ok=True)

        return _ms(go, before=tidy)

    out["save"] = {"worker._save (run dir disk)": save(ckpt.parent)}
    if os.path.isdir("/dev/shm"):
        shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            out["save"]["same on tmpfs (/dev/shm), for comparison"] = save(shm)
        finally:
            shutil.rmtree(shm, ignore_errors=True)
    import numpy as np

    order = np.random.default_rng(0).permutation(len(train_part))
    out["batch_slice_ms"] = _ms(lambda: train_part.batch(order[:bs]))
    out["batch_slices_per_train_hop_ms"] = steps_t * out["batch_slice_ms"]
    # What a hop pays: the caches are cold after each train step, so time it between steps.
    indices = list(torch.split(torch.from_numpy(order), bs))

    def step() -> None:
        ex.train_step(comps["model"], comps["optimizer"], x, y)

    out["between_steps_ms_per_train_hop"] = {
        "one gather per minibatch (Partition.batch)": _between_steps(
            lambda: (train_part.batch(ix) for ix in indices), step
        ),
        "gathered together (Partition.batches, what a hop uses)": _between_steps(
            lambda: train_part.batches(indices), step
        ),
    }

    child = Child("probe worker")
    try:
        out["ipc_round_trip_ms"] = _ms(lambda: child.call(_noop), repeat=200)
    finally:
        child.close()
    t = time.perf_counter()
    child = Child("start-up probe")
    owned = {"train": [0], "val": [0]}
    child.call(setup_worker, spec, str(run_dir / "data"), owned, str(run_dir), 1, "cpu")
    out["worker_start_to_setup_done_s"] = time.perf_counter() - t
    t = time.perf_counter()
    child.close()
    out["worker_close_s"] = time.perf_counter() - t

    load = sum(out["load"].values())
    save_ms = out["save"]["worker._save (run dir disk)"]
    fixed_train = load + save_ms + out["batch_slices_per_train_hop_ms"]
    fixed_val = load + steps_v * out["batch_slice_ms"]
    out["predicted_in_hop_share_train"] = fixed_train / (fixed_train + out["train_hop_user_ms"])
    out["predicted_in_hop_share_val"] = fixed_val / (fixed_val + out["val_hop_user_ms"])
    return out


def _print(name: str, r: dict[str, Any]) -> None:
    print(f"\n=== {name}: config {r['config']} ===")
    print(
        f"user work: train step {r['train_step_ms']:.2f} ms -> train hop "
        f"{r['train_hop_user_ms']:.1f} ms; val step {r['val_step_ms']:.2f} ms -> val hop "
        f"{r['val_hop_user_ms']:.1f} ms"
    )
    print(f"load a model ({r['checkpoint_bytes'] / 1e3:.0f} kB checkpoint):")
    for k, v in r["load"].items():
        print(f"  {k:<45} {v:7.3f} ms")
    print("save it:")
    for k, v in r["save"].items():
        print(f"  {k:<45} {v:7.3f} ms")
    print(
        f"minibatch slice {r['batch_slice_ms']:.3f} ms (x steps = "
        f"{r['batch_slices_per_train_hop_ms']:.2f} ms per train hop)"
    )
    print("one train hop's minibatches, cut between train steps (cold caches):")
    for k, v in r["between_steps_ms_per_train_hop"].items():
        print(f"  {k:<55} {v:7.2f} ms")
    print(f"controller <-> worker round trip of an empty call: {r['ipc_round_trip_ms']:.3f} ms")
    print(
        f"worker start to set-up done {r['worker_start_to_setup_done_s']:.2f} s; close "
        f"(interpreter exit) {r['worker_close_s']:.2f} s"
    )
    print(
        f"predicted in-hop overhead: train hops {r['predicted_in_hop_share_train']:.1%}, "
        f"val hops {r['predicted_in_hop_share_val']:.1%} (every hop loading its model; a "
        "hop that finds it in the worker's model cache skips the load)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", choices=("W1", "W2"))
    p.add_argument("--out", default=str(RESULTS / "hop_costs.json"))
    args = p.parse_args(argv)
    wls = workloads()
    report: dict[str, Any] = {"loadavg_start": os.getloadavg(), "workloads": {}}
    for name in [args.only] if args.only else list(wls):
        run_dir = Path(tempfile.mkdtemp(prefix=f"cerebro-hop-costs-{name}-"))
        try:
            report["workloads"][name] = r = measure(wls[name], run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        _print(name, r)
    report["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nload average {report['loadavg_start'][0]:.2f} -> {report['loadavg_end'][0]:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
