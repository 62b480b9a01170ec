"""dataset.decode=gpu: an image folder's JPEGs decoded on the training GPU (nvJPEG, through
torchvision's decode_jpeg, one call per batch), cropped and flipped there. PIL decoding in the
DataLoader workers (folder.py) keeps up with a GPU only with many cores: a 224 px JPEG costs a core
a few milliseconds, and ResNet-50 trains on thousands of images a second.

What stays as it is on the CPU path, since only the decoding moves:
- The files, their labels and order: the same split (EncodedSplit is a FolderSplit), sampler,
  batches, resume position and data-parallel shares (folder.FromBatch, Subset).
- Each training image's crop and flip, drawn in the worker by the same RandomResizedCrop and
  RandomHorizontalFlip objects from the same seed, draw_seed(seed, epoch, index), in the same
  order: the box is the one PIL would have cut.
- Unreadable files: a file that the GPU's decoder fails on is read by PIL as the CPU path reads it,
  and one that PIL cannot read either is counted and, in training, replaced by the next readable
  file of the split (folder.FolderSplit.item): the batch and the counts are the CPU path's.
- Files other than whole 8-bit grey or RGB JPEGs (PNG, TIFF, CMYK JPEGs, files cut short) are
  decoded, cropped and flipped by PIL in the workers, exactly as on the CPU path.

What differs: the JPEG decoder (nvJPEG's IDCT and chroma upsampling against libjpeg-turbo's) and
the resize (bilinear with antialiasing in float32, rounded once, against PIL's fixed-point passes):
a few levels of 255 here and there (tests/test_jpeg_decode.py measures it on the CPU)."""

import io
import itertools
import logging
import warnings
from typing import List, NamedTuple, Optional

import torch
from PIL import Image

from cnnbench.data.folder import REFILL_TRIES, FolderSplit, _why, seeded
from cnnbench.errors import CnnbenchError

log = logging.getLogger("cnnbench")

ORIENTATION = 0x0112  # EXIF tag 274: how the stored pixels are turned (1: upright)


def decode_on_device(conf, device: torch.device) -> bool:
    """dataset.decode: auto decodes on the GPU when the run trains on one (CUDA) whose decoder works,
    with PIL in the DataLoader workers otherwise; gpu without one is refused, cpu is PIL's."""
    asked = str(getattr(conf, "decode", "auto"))  # configs built by hand (tests) may not have it
    if asked == "cpu":
        return False
    if device.type != "cuda":
        if asked == "gpu":
            raise CnnbenchError(
                f"dataset.decode=gpu decodes the JPEGs with the GPU's decoder (nvJPEG), but this run trains on "
                f"{device}. Set dataset.decode=auto (the GPU's decoder on CUDA, PIL in the DataLoader workers "
                f"elsewhere) or dataset.decode=cpu, or train on a CUDA GPU (trainer.device=cuda).")
        return False
    why = _decoder_fails(device)
    if why and asked == "gpu":
        raise CnnbenchError(f"dataset.decode=gpu, but torchvision cannot decode a JPEG on {device}: {why}. Set "
                            f"dataset.decode=cpu (PIL in the DataLoader workers), or install a torchvision built "
                            f"for this GPU.")
    if why:
        log.warning(f"Decoding JPEGs with PIL in the DataLoader workers: torchvision cannot decode one on "
                    f"{device} ({why}).")
    return not why


def _decoder_fails(device: torch.device) -> Optional[str]:
    """Why torchvision cannot decode a small JPEG on the device (a build without nvJPEG); None if it can."""
    from torchvision.io import decode_jpeg

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, format="JPEG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points at TorchCodec
            decode_jpeg(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8), device=device)
    except RuntimeError as e:
        return " ".join(str(e).split())[:200]
    return None


# ---------------------------------------------------------------------------------------------
# In the DataLoader workers: the bytes, the header, the draws
# ---------------------------------------------------------------------------------------------

def jpeg_header(data: bytes):
    """(height, width, orientation) of a file the GPU's decoder takes: an 8-bit grey or colour
    (YCbCr) JPEG, whole, as PIL reads its header (height and width as PIL's exif_transpose turns
    it); None for any other file. Whole: ending in the end-of-image marker, since PIL finds a file
    cut short unreadable and nvJPEG may decode what it has."""
    if not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only: nothing is decoded
            if im.format not in ("JPEG", "MPO") or im.mode not in ("L", "RGB"):  # CMYK goes to PIL
                return None
            width, height = im.size
            orientation = im.getexif().get(ORIENTATION, 1)  # what exif_transpose reads
    except Exception:  # PIL will say what is wrong with it, on the CPU path
        return None
    return (width, height, orientation) if orientation in (5, 6, 7, 8) else (height, width, orientation)


class Encoded(NamedTuple):
    """A JPEG in a batch: what the device needs to decode it and crop it as FolderSplit would."""
    at: int  # its place in the batch
    index: int  # the item asked for, whose seed drew the crop
    file: int  # the file read: index, or a later one that replaced unreadable files (training)
    epoch: Optional[int]  # None: evaluation
    orientation: int  # EXIF orientation, 1-8
    box: Optional[tuple]  # (top, left, height, width) px of the upright image; None: resize and centre crop
    flip: bool  # turned left to right after the crop


class EncodedSplit(FolderSplit):
    """FolderSplit for dataset.decode=gpu. Of a JPEG the GPU's decoder takes (jpeg_header), a worker
    sends the bytes, with the crop and flip drawn for it: the calls FolderSplit's transform makes, in
    its order, from the same seed. Any other file is read by PIL as FolderSplit reads it, crop too.
    crop, flip: training with dataset.augment: the RandomResizedCrop and RandomHorizontalFlip of its
    transform; None: resize and centre crop. Returns (bytes, label, unreadable, Encoded), or
    (image, label, unreadable, None) from PIL; (None, ...) when no file could be read."""

    def __init__(self, root, transform, channels: int, seed: int, refill: bool, crop=None, flip=None):
        super().__init__(root, transform, channels, seed, refill)
        self.crop, self.flip = crop, flip

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, None)
        unreadable = []
        for j in range(index, index + (REFILL_TRIES if self.refill else 1)):
            path, label = self.samples[j % len(self.samples)]
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                unreadable.append(f"{path} ({_why(e, path)})")
                continue
            header = jpeg_header(data)
            if header is None:  # PIL's, as FolderSplit reads it
                image, label, more = self.item(index, epoch, start=j, stop=j + 1)
                unreadable += more
                if image is None:
                    continue
                return image, label, unreadable, None
            height, width, orientation = header
            box, flip = self.draw(height, width, index, epoch)
            return data, label, unreadable, Encoded(0, index, j, epoch, orientation, box, flip)
        return None, self.targets[index], unreadable, None

    def draw(self, height: int, width: int, index: int, epoch: Optional[int]):
        """(box, flip) of one image: RandomResizedCrop's box for an upright image of that size,
        and RandomHorizontalFlip's coin, drawn as the CPU path's transform draws them."""
        if epoch is None or self.crop is None:
            return None, False
        with seeded(self.seed, epoch, index):
            size_only = torch.empty(1, dtype=torch.uint8).expand(1, height, width)  # (C, H, W), no pixels
            box = self.crop.make_params([size_only])
            flip = bool(torch.rand(1) < self.flip.p)  # the flip's test: torch.rand(1) >= p keeps the image
        return (box["top"], box["left"], box["height"], box["width"]), flip


class EncodedBatch(NamedTuple):
    images: torch.Tensor  # (F, C, S, S) uint8: the files PIL read, cropped in the workers
    image_at: List[int]  # their places in the batch
    jpegs: torch.Tensor  # the JPEG files' bytes, one after another: one tensor for the workers to pass on
    ends: List[int]  # where each file ends in jpegs
    encoded: List[Encoded]  # what each one needs, in the order of jpegs
    labels: torch.Tensor  # (B,)
    unreadable: List[str]  # "path (why)" of each unreadable file the workers met


def collate_encoded(samples) -> EncodedBatch:
    """EncodedSplit's items of one batch, less those with no readable file (as collate_readable)."""
    kept = [s for s in samples if s[0] is not None]
    images, image_at, jpegs, encoded = [], [], [], []
    for at, (data, _, _, meta) in enumerate(kept):
        if meta is None:
            images.append(data)
            image_at.append(at)
        else:
            jpegs.append(data)
            encoded.append(meta._replace(at=at))
    blob = torch.frombuffer(bytearray().join(jpegs), dtype=torch.uint8) if jpegs else torch.empty(0, dtype=torch.uint8)
    return EncodedBatch(torch.stack(images) if images else torch.empty(0, dtype=torch.uint8), image_at, blob,
                        list(itertools.accumulate(len(d) for d in jpegs)), encoded,
                        torch.tensor([s[1] for s in kept], dtype=torch.long), [bad for s in samples for bad in s[2]])


# ---------------------------------------------------------------------------------------------
# In the training process: decode, turn upright, crop, flip
# ---------------------------------------------------------------------------------------------

def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image as PIL's exif_transpose turns it for an EXIF orientation (2: mirrored,
    3: upside down, 6: stored turned 90 degrees left, ...; 1 and anything else: as stored)."""
    if orientation in (5, 6, 7, 8):  # TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90
        image = image.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return image.flip(flips) if flips else image


class DeviceDecoder:
    """An EncodedBatch -> ((B, C, S, S) uint8 images on the device, (B,) labels, unreadable). The
    JPEGs are decoded by one decode_jpeg call on the device (nvJPEG on a GPU), turned upright, and
    cropped as FolderSplit's transform crops with PIL: the drawn box resized to size, or the shorter
    side resized to `resize` and the centre cut; bilinear with antialiasing, in float32, rounded."""

    def __init__(self, split: EncodedSplit, device: torch.device, size: int, resize: int):
        from torchvision.io import ImageReadMode

        self.split, self.device, self.size, self.resize = split, device, size, resize
        self.mode = ImageReadMode.RGB if split.channels == 3 else ImageReadMode.GRAY
        self.refused: set = set()  # files the device's decoder failed on: PIL reads them from then on
        self.on_device = self.by_pil = 0  # images of this pass

    def __call__(self, batch: EncodedBatch):
        from torchvision.transforms.v2 import functional as F

        labels, unreadable = batch.labels, list(batch.unreadable)
        x = torch.empty((len(labels), self.split.channels, self.size, self.size), device=self.device)  # float32
        if batch.image_at:
            x[batch.image_at] = batch.images.to(self.device, non_blocking=True).float()
        starts = [0, *batch.ends[:-1]]
        decoded = self._decode([batch.jpegs[a:b] for a, b in zip(starts, batch.ends)], batch.encoded)
        kept = torch.ones(len(labels), dtype=torch.bool)
        for e, image in zip(batch.encoded, decoded):
            if image is None:  # the device's decoder failed: PIL reads it, as the CPU path does
                image, label, more = self.split.item(e.index, e.epoch, start=e.file)
                unreadable += more
                if image is None:
                    kept[e.at] = False
                else:
                    x[e.at], labels[e.at] = image.to(self.device).float(), label
                    self.by_pil += 1
                continue
            image = upright(image, e.orientation).float()  # (C, H, W) as a viewer shows it
            if e.box is None:
                image = F.center_crop(F.resize(image, [self.resize], antialias=True), [self.size, self.size])
            else:
                image = F.resized_crop(image, *e.box, [self.size, self.size], antialias=True)
                image = image.flip(-1) if e.flip else image
            x[e.at] = image
        self.on_device += sum(image is not None for image in decoded)
        self.by_pil += len(batch.image_at)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        if not kept.all():
            x, labels = x[kept.to(self.device)], labels[kept]
        return x, labels, unreadable

    def _decode(self, jpegs: List[torch.Tensor], encoded: List[Encoded]) -> list:
        """Each JPEG decoded on the device, None where the decoder failed: one call for the batch,
        and one a file when that call fails (it keeps none of the batch when one file fails)."""
        from torchvision.io import decode_jpeg

        out = [None] * len(jpegs)
        todo = [k for k, e in enumerate(encoded) if e.file not in self.refused]
        if not todo:
            return out
        if self.device.type == "cuda":
            # torchvision's CUDA decoder allocates its outputs on the current stream but writes them on
            # a stream of its own that does not wait for it: memory that queued kernels still read
            # could be handed out and overwritten (pytorch/vision#9606, fixed only in torchcodec,
            # meta-pytorch/torchcodec#1634). Waiting for the queued work first closes that window;
            # the decode blocks the host anyway, so only some overlap is lost.
            torch.cuda.current_stream(self.device).synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points at TorchCodec
            try:
                for k, image in zip(todo, decode_jpeg([jpegs[k] for k in todo], mode=self.mode, device=self.device)):
                    out[k] = image
            except RuntimeError:
                for k in todo:
                    try:
                        out[k] = decode_jpeg(jpegs[k], mode=self.mode, device=self.device)
                    except RuntimeError:
                        self.refused.add(encoded[k].file)
        return out

    def end_pass(self, split) -> None:
        """Say how many images of the pass PIL decoded, if any; start counting afresh."""
        if self.by_pil:
            refused = f", {len(self.refused)} of them JPEGs the GPU's decoder failed on" if self.refused else ""
            log.info(f"{self.by_pil:,} of the {self.by_pil + self.on_device:,} images read from {split} this pass "
                     f"were decoded by PIL on the CPU: files other than whole 8-bit grey or RGB JPEGs{refused}.")
        self.on_device = self.by_pil = 0
