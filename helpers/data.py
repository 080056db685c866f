"""MNIST-style datasets through torchvision: the files checked, each split one tensor on the device.

load() is what a run calls: the training split's pixels, the test split's, the latent map's labels.
"""

import contextlib
import gzip
import io
import os
import shutil
import zlib
from argparse import Namespace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision import datasets

DATASETS = {
    "mnist": datasets.MNIST,
    "fashion-mnist": datasets.FashionMNIST,
    "kmnist": datasets.KMNIST,
}
IMAGE_SIZE = 28
# the test set is binarized once, the same for every run, so results compare
TEST_BINARIZATION_SEED = 0
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: unsigned bytes, 3 and 1 dimensions


class DataError(Exception):
    """A dataset problem the user can fix; the message says how."""


def raw_folder(dataset: str, root: str | Path) -> Path:
    """Where torchvision looks for `dataset`'s files under `root`."""
    return Path(root) / DATASETS[dataset].__name__ / "raw"


def file_names(dataset: str) -> list[str]:
    """The four IDX file names torchvision expects (each may also be present gzipped, as .gz)."""
    return [os.path.splitext(name)[0] for name, _ in DATASETS[dataset].resources]


def _download(dataset: str, root: Path) -> None:
    """Let torchvision fetch the files; on failure raise a DataError that says where to put them,
    and remove the folders the attempt created."""
    folder = raw_folder(dataset, root)
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    print(f"{dataset}: files not found in {folder}; downloading them there")
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            DATASETS[dataset](str(root), train=True, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, …
        for path in made:  # deepest first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                path.rmdir()
        names = ", ".join(file_names(dataset))
        raise DataError(
            f"{dataset} is not in {folder} and downloading it failed ({type(error).__name__}): "
            f"put {names} (or the original .gz files) in that folder, or pass --data-dir DIR where "
            f"DIR/{folder.parent.name}/raw holds them"
        ) from None


def _extract_gz(folder: Path, names: list[str]) -> None:
    """Unpack NAME.gz beside it for each missing NAME, as torchvision does after a download (but
    with no checksum: another distributor's recompressed files are as good). NAME appears whole or
    not at all: a damaged .gz (or a stop) leaves no partial file behind."""
    for name in names:
        packed, unpacked = folder / f"{name}.gz", folder / name
        if not unpacked.exists() and packed.exists():
            partial = folder / f"{name}.partial"
            try:
                with gzip.open(packed) as source, open(partial, "wb") as target:
                    shutil.copyfileobj(source, target)
                os.replace(partial, unpacked)
            except (gzip.BadGzipFile, EOFError, zlib.error) as error:
                raise DataError(
                    f"{packed} cannot be unpacked ({error}): replace it with a good copy"
                ) from None
            except OSError as error:  # reading it, or writing beside it (a full disk, say)
                raise DataError(
                    f"{packed} cannot be unpacked into {folder} ({error.strerror or error}): "
                    "make room there, or unpack it yourself"
                ) from None
            finally:
                partial.unlink(missing_ok=True)


def _read_header(path: Path, magic: int, n_dims: int) -> list[int]:
    """The dimensions in an IDX file's header, after checking its magic number and length."""
    with open(path, "rb") as f:
        header = f.read(4 * (1 + n_dims))
    if len(header) < 4 * (1 + n_dims):
        raise DataError(
            f"{path} is truncated (no complete IDX header): replace it with a good copy"
        )
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} has magic number {found:#010x}, expected {magic:#010x}: it is not an IDX "
            f"{'image' if n_dims == 3 else 'label'} file; replace it with a good copy"
        )
    dims = [int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(1, 1 + n_dims)]
    expected = len(header) + (dims[0] * (dims[1] * dims[2] if n_dims == 3 else 1))
    size = path.stat().st_size
    if size != expected:
        raise DataError(
            f"{path} is {size} bytes but its header {dims} needs {expected}: the file is "
            f"{'truncated' if size < expected else 'too long'}; replace it with a good copy"
        )
    return dims


def check_split(dataset: str, root: str | Path, train: bool) -> None:
    """Check one split's image and label files before torchvision reads them (it only asserts)."""
    folder = raw_folder(dataset, root)
    prefix = "train" if train else "t10k"
    images, labels = folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"
    n_images, height, width = _read_header(images, _IMAGES_MAGIC, 3)
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{images} holds {height}x{width} images; this project expects "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}: replace it with the {dataset} file"
        )
    (n_labels,) = _read_header(labels, _LABELS_MAGIC, 1)
    if n_images != n_labels:
        raise DataError(
            f"{images} holds {n_images} images but {labels} holds {n_labels} labels: "
            "the two files do not belong together; replace them with a matching pair"
        )
    if n_images == 0:
        raise DataError(f"{images} holds no images: replace it with a good copy")


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` as an IDX file of unsigned bytes: magic (0, 0, 8, ndim), big-endian sizes, data.
    The inverse of what load() reads: the tests and the benchmark write small datasets with it."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _checked_split(dataset: str, root: str | Path, train: bool) -> datasets.VisionDataset:
    """One split as torchvision's dataset, after checking its files (downloading them if absent)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    root = Path(root)
    folder = raw_folder(dataset, root)
    _extract_gz(folder, file_names(dataset))
    if not all((folder / name).exists() for name in file_names(dataset)):
        _download(dataset, root)
    check_split(dataset, root, train)
    return DATASETS[dataset](str(root), train=train, download=False)


def load_split(dataset: str, root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images, uint8 [N, 28, 28], and labels, int64 [N] class indices (see
    class_names), downloading the files if none are there."""
    split = _checked_split(dataset, root, train)
    return split.data, split.targets


def load_images(dataset: str, root: str | Path, train: bool) -> torch.Tensor:
    """One split's images as a uint8 tensor [N, 28, 28], downloading the files if none are there."""
    return load_split(dataset, root, train)[0]


def class_names(dataset: str) -> list[str]:
    """The names of the class indices: digits for MNIST, torchvision's names for the others."""
    return [name.split(" - ")[0] for name in DATASETS[dataset].classes]  # MNIST's "0 - zero"


def to_test_pixels(images: torch.Tensor, device: torch.device, binarize: str) -> torch.Tensor:
    """The test split's pixels as every run sees them: binarized once, with the fixed
    TEST_BINARIZATION_SEED, whenever the run binarizes (dynamically or statically)."""
    return to_pixels(
        images, device, "none" if binarize == "none" else "static", seed=TEST_BINARIZATION_SEED
    )


def to_pixels(
    images: torch.Tensor, device: torch.device, binarize: str = "none", seed: int = 0
) -> torch.Tensor:
    """uint8 [N,28,28] → float [N,784] in [0,1] on `device`; binarize="static" samples
    every pixel ~ Bernoulli(intensity) once, with a CPU generator seeded by `seed`, before the
    move: every device gets the same binary images (a device's own generator draws others)."""
    pixels = images.cpu().reshape(images.shape[0], -1).float().div_(255)
    if binarize == "static":
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.bernoulli(pixels, generator=generator)
    return pixels.to(device)


class Data(NamedTuple):
    """The splits as float pixels [N,784] on the device, and the test split's labels (the latent
    map's colours)."""

    train: torch.Tensor | None
    test: torch.Tensor
    test_labels: torch.Tensor


def load(args: Namespace, device: torch.device, train: bool = True) -> Data:
    """The test split (binarized once, seeded, when the run binarizes), and the training split."""
    images = load_images(args.dataset, args.data_dir, train=True) if train else None
    test_images, test_labels = load_split(args.dataset, args.data_dir, train=False)
    return Data(
        to_pixels(images, device, args.binarize, seed=args.seed) if train else None,
        to_test_pixels(test_images, device, args.binarize),
        test_labels,
    )
