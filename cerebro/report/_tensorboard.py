"""TensorBoard event files of a run, written from its catalog: ``DIR/tensorboard/<model_id>/``.

NOTE [ steps and idempotence ]
Per model (one TensorBoard run each):

- ``train_minibatch/<name>``: every train minibatch's value; the step counts the model's
  train minibatches across its done train hops in hop order (1, 2, ...), so the curve is
  the model's sequential-SGD history, hop after hop, whichever worker ran the hop.
- ``train/<name>``, ``val/<name>``: the per-epoch aggregates of the ``metrics`` table; the
  step is the number of epochs completed (catalog epoch + 1).
- ``test/<name>``: the ``evaluations`` table's values, at the model's last epoch.
- the hparams plugin's summaries: the model's hyperparameters with its final train, val and
  test metrics (the plugin shows the last value of each of those scalar tags).

Wall times are the hops' real end times. Everything is written into a fresh temporary
folder that then replaces ``DIR/tensorboard``, so rewriting never duplicates events.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cerebro._atomic import swap_dir
from cerebro.report._data import RunData, load_run
from cerebro.statuses import DROPPED, HopStatus, ModelStatus

__all__ = ["write_tensorboard"]

TENSORBOARD = "tensorboard"


def write_tensorboard(run_dir: str | Path) -> Path:
    """Write TensorBoard event files of the latest fit in ``run_dir`` (read from its catalog).

    View them with ``tensorboard --logdir DIR/tensorboard``. Rewriting replaces the
    previous files.

    Args:
        run_dir: a run directory (the ``output_dir`` of a fit).

    Returns:
        ``run_dir/tensorboard``.

    Raises:
        FileNotFoundError: ``run_dir`` has no catalog.
        NoFitError: the catalog has no fit yet.
        ImportError: the ``tensorboard`` package is missing.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, hop_metrics=True)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # pragma: no cover - tensorboard is a dependency
        raise ImportError(
            "write_tensorboard needs the tensorboard package: pip install tensorboard"
        ) from e
    out = run_dir / TENSORBOARD
    tmp = run_dir / f".{TENSORBOARD}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    domains = _discrete_domains(run)
    try:
        for model in run.models:
            writer = SummaryWriter(log_dir=str(tmp / model["model_id"]), max_queue=1000)
            try:
                _write_model(writer, run, model, domains)
            finally:
                writer.close()
        swap_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _hparam_value(v: Any) -> int | float | str | bool:
    if isinstance(v, bool | int | float | str):
        return v
    return repr(v)


def _discrete_domains(run: RunData) -> dict[str, list[Any]]:
    """Each hyperparameter's values across models, when they share one type (plugin rule)."""
    out: dict[str, list[Any]] = {}
    for name in run.hyperparam_names():
        vals = [_hparam_value(m["hyperparams"].get(name)) for m in run.models]
        if len({type(v) for v in vals}) == 1:
            out[name] = sorted(set(vals))
    return out


def _write_model(
    writer: Any, run: RunData, model: dict[str, Any], domains: dict[str, list[Any]]
) -> None:
    from torch.utils.tensorboard.summary import hparams

    mid = model["model_id"]
    step = 0
    epoch_end: dict[int, float] = {}
    for h in run.hops:
        if h["model_id"] != mid or h["status"] != HopStatus.DONE:
            continue
        end = float(h["end"] or h["start"])
        epoch_end[int(h["epoch"])] = max(epoch_end.get(int(h["epoch"]), 0.0), end)
        if h["kind"] != "train" or not h.get("metrics"):
            continue
        values: dict[str, list[float]] = h["metrics"].get("values") or {}
        n = max((len(v) for v in values.values()), default=0)
        start = float(h["start"])
        for i in range(n):
            wall = start + (end - start) * (i + 1) / n
            for name, vs in values.items():
                if i < len(vs) and vs[i] is not None:
                    writer.add_scalar(f"train_minibatch/{name}", vs[i], step + i + 1, wall)
        step += n
    final: dict[str, float] = {}
    last_epoch = 0
    for m in run.metrics:
        if m["model_id"] != mid or m["value"] is None:
            continue
        epoch = int(m["epoch"])
        tag = f"{m['split']}/{m['name']}"
        writer.add_scalar(tag, m["value"], epoch + 1, epoch_end.get(epoch, run.now))
        if epoch + 1 >= last_epoch:
            last_epoch = epoch + 1
        final[tag] = float(m["value"])  # metrics are ordered by epoch: the last one stays
    for key, value in run.test_metrics().get(mid, {}).items():
        split, _, name = key.partition("_")
        writer.add_scalar(f"{split}/{name}", value, max(last_epoch, 1), run.now)
        final[f"{split}/{name}"] = value
    hp = {k: _hparam_value(v) for k, v in model["hyperparams"].items()}
    exp, ssi, sei = hparams(
        hp, final, hparam_domain_discrete={k: v for k, v in domains.items() if k in hp}
    )
    _set_session_status(sei, str(model["status"]))
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)


def _set_session_status(sei: Any, status: str) -> None:
    """The hparams view's session status: done and early-stopped models as successes,
    failed and diverged ones as failures, the rest as running.

    (torch's ``hparams()`` always writes success; the view can filter by status.)
    """
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    if status in (ModelStatus.DONE, ModelStatus.STOPPED):
        value = api_pb2.STATUS_SUCCESS
    elif status in DROPPED:
        value = api_pb2.STATUS_FAILURE
    else:
        value = api_pb2.STATUS_RUNNING
    meta = sei.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(meta.content)
    data.session_end_info.status = value
    meta.content = data.SerializeToString()
