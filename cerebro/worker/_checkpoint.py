"""A model's checkpoint: what it holds, its atomic write, and building a model from it.

NOTE [ model state travels whole ]
The checkpoint holds the ``state_dict`` of every component that has one (modules,
optimizer, LR scheduler) and the model's own torch RNG state. Restoring the RNG makes a
model's dropout masks and the like depend only on its own hop sequence, not on which worker
ran it or what that worker ran before: with the "fixed" scheduling policy a run is
bit-identical to any other run with the same seed.

NOTE [ atomic checkpoints ]
A hop writes its checkpoint through ``cerebro._atomic.replacing`` (NOTE [ atomic renames ]);
the controller records the new checkpoint in the catalog only after the hop returns. A
killed worker or driver leaves at worst an unreferenced file, never a half-written one that
the catalog points at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from cerebro._atomic import replacing
from cerebro._pack import pack
from cerebro.engine.messages import HopTask
from cerebro.model_cache import ModelCache
from cerebro.spec import MinibatchSpec

__all__ = ["Unusable", "build_model", "save_checkpoint", "seed_torch"]


class Unusable(Exception):
    """A user function returned something Cerebro cannot use."""


def build_model(
    spec: MinibatchSpec, task: HopTask, device: torch.device, cache: ModelCache
) -> dict[str, Any]:
    """The model's components with its state: kept from an earlier hop, loaded, or fresh."""
    kept = cache.take(task.model_id, task.in_ckpt) if task.kind != "probe" else None
    if kept is not None and (rng := kept[1]) is not None:
        seed_torch(task.init_seed, device)  # NOTE [ model cache ]: the RNG exactly as a load
        torch.set_rng_state(rng)
        return kept[0]
    state = None
    if task.in_ckpt is not None:
        state = torch.load(task.in_ckpt, map_location="cpu", weights_only=False)
    seed_torch(task.init_seed, device)
    if kept is not None and state is not None and "rng" in state:
        components = kept[0]  # NOTE [ model cache ]: held, but older than the checkpoint
        for obj in components.values():
            if isinstance(obj, torch.nn.Module):
                obj.zero_grad(set_to_none=True)  # as built: no gradients
    else:
        components = spec.create_model_components(dict(task.hyperparams))
        if not isinstance(components, dict) or "optimizer" not in components:
            got = sorted(components) if isinstance(components, dict) else type(components).__name__
            raise Unusable(f"must return a dict with the key 'optimizer', got {got}")
        for obj in components.values():
            if isinstance(obj, torch.nn.Module):
                obj.to(device)
    if state is not None:
        # A Cerebro checkpoint, or (models_dir) a plain {component: state_dict} file.
        saved = state.get("components", state)
        for name, sd in saved.items():
            if name not in components:
                raise Unusable(
                    f"returned no component {name!r}, which the checkpoint "
                    f"{task.in_ckpt} holds (it has {sorted(components)})"
                )
            components[name].load_state_dict(sd)
        if "rng" in state:
            torch.set_rng_state(state["rng"])
    return components


def seed_torch(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)``, as far as a hop on ``device`` can tell.

    On a CPU worker only the CPU generator is used, so only it is seeded: the rest of
    ``torch.manual_seed`` (CUDA's and XPU's lazy seeding each record a stack trace while
    those are not initialized) cost 0.2-0.4 ms a hop, a sixth of a whole model load.
    """
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def save_checkpoint(components: dict[str, Any], out: str, task: HopTask) -> torch.Tensor:
    """Write the model's checkpoint atomically; returns the RNG state it holds."""
    rng = torch.get_rng_state()
    state = {
        "model_id": task.model_id,
        "hyperparams": dict(task.hyperparams),
        "epoch": task.epoch,
        "components": {
            k: v.state_dict()
            for k, v in components.items()
            if hasattr(v, "state_dict") and hasattr(v, "load_state_dict")
        },
        "rng": rng,
    }
    try:
        with replacing(out) as tmp, _no_zip_crc():
            torch.save(pack(state), tmp)  # one record per dtype, not per tensor: faster loads
    except (OSError, RuntimeError) as e:  # torch reports a short write as RuntimeError
        raise OSError(
            f"could not write it ({e}); the disk may be full or a file-size limit reached"
        ) from e
    return rng


@contextlib.contextmanager
def _no_zip_crc() -> Iterator[None]:
    """``torch.save`` without the zip records' CRC32s (~0.5 ms of a 1.3 MB checkpoint's
    3 ms): ``torch.load`` never checks them, and the rename makes a write all-or-nothing
    anyway. Only this call: a user hook's own ``torch.save`` keeps the setting it had."""
    get = getattr(torch.serialization, "get_crc32_options", None)
    set_ = getattr(torch.serialization, "set_crc32_options", None)
    if get is None or set_ is None:  # torch < 2.6: always computed
        yield
        return
    before = get()
    set_(False)
    try:
        yield
    finally:
        set_(before)
