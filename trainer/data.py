"""Training inputs from disk: the photo folder, the style image, the sample photos.

Data order is a pure function of (seed, number of images consumed): epoch e
is a permutation drawn from a generator seeded with (seed, e), and every item
carries its own crop seed. A resumed run therefore starts its stream at
iteration * batch_size and sees exactly what an uninterrupted run would have,
whatever the number of DataLoader workers.
"""
from __future__ import annotations

import hashlib
import itertools
import signal
from pathlib import Path
from typing import Iterator

import torch
import torchvision.transforms.v2 as transforms
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from vidstyle.errors import VidstyleError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}

# Crops of at least a quarter of the photo: the default 8% would upsample
# small patches of these ~320 px photos into blur the network learns to keep.
CROP_SCALE = (0.25, 1.0)


def find_images(folder: Path) -> list[Path]:
    """Image files under folder, recursively, sorted by path so the split and order are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VidstyleError(f"dataset folder not found: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise VidstyleError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return images


def read_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise VidstyleError(f"cannot read image {path}: {exc}") from exc


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float RGB 0..255, vidstyle's convention."""
    return TF.pil_to_tensor(image).float()


def load_style_image(path: Path, long_side: int) -> torch.Tensor:
    """(1, 3, H, W) with the long side resized to long_side: sets the scale of the learned texture."""
    image = read_rgb(path)
    factor = long_side / max(image.size)
    size = (max(1, round(image.height * factor)), max(1, round(image.width * factor)))
    return to_tensor(TF.resize(image, list(size), antialias=True)).unsqueeze(0)


def load_sample_photos(paths: list[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size): short side resized to size, centre-cropped; fixed, unlike training crops."""
    return torch.stack([to_tensor(TF.center_crop(TF.resize(read_rgb(p), size, antialias=True), size)) for p in paths])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RandomCrops(Dataset):
    """Indexed by (image index, crop seed); returns a random square crop as (3, size, size):
    random-resized, or with resize=False at the photo's own scale (a photo with a shorter
    side is scaled up to size first)."""

    def __init__(self, paths: list[Path], size: int, resize: bool = True):
        self.paths = paths
        self.size = size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, crop_seed = key
        image = read_rgb(self.paths[index])
        # get_params draws from the global generator; fork_rng keeps that draw
        # a function of crop_seed alone and leaves the caller's state untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(crop_seed)
            if not self.resize:
                if min(image.size) < self.size:
                    image = TF.resize(image, self.size, antialias=True)
                top, left, height, width = transforms.RandomCrop.get_params(image, (self.size, self.size))
                return to_tensor(TF.crop(image, top, left, height, width))
            top, left, height, width = transforms.RandomResizedCrop.get_params(image, CROP_SCALE, [3 / 4, 4 / 3])
        crop = TF.resized_crop(image, top, left, height, width, [self.size, self.size], antialias=True)
        return to_tensor(crop)


class SeededStream(Sampler):
    """An endless stream of (image index, crop seed), starting after `start` items."""

    def __init__(self, num_images: int, seed: int, start: int = 0):
        self.num_images = num_images
        self.seed = seed
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.num_images)
        for epoch in itertools.count(epoch):
            order = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
            for position in range(offset, self.num_images):
                yield int(order[position]), _mix(self.seed, epoch, position)
            offset = 0


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers; different tuples give unrelated seeds."""
    digest = hashlib.blake2b(repr(numbers).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def training_batches(
    paths: list[Path], image_size: int, batch_size: int, seed: int, start_item: int, workers: int, pin_memory: bool,
    resize: bool = True,
) -> DataLoader:
    """Endless batches of (batch_size, 3, image_size, image_size) crops, decoded in worker processes;
    resize=False crops at the photos' own scale."""
    return DataLoader(
        RandomCrops(paths, image_size, resize),
        batch_size=batch_size,
        sampler=SeededStream(len(paths), seed, start_item),
        num_workers=workers,
        pin_memory=pin_memory,
        # Starting workers draws a seed from this generator; from the global one it
        # would shift the stream that a resumed run restores. (Crops use their own seeds.)
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_leave_signals_to_the_trainer,
    )


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group; a worker that died of it would
    crash the trainer before it could save its checkpoint. The trainer stops
    its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
