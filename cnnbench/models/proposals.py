"""Region proposals from outside the network, and what a detector's evaluation costs.

Selective Search (Uijlings, van de Sande, Gevers & Smeulders 2013, "Selective Search for Object
Recognition", IJCV 104(2)) groups a Felzenszwalb-Huttenlocher over-segmentation bottom-up by
colour, texture, size and fill similarity and proposes the bounding box of every group it forms:
about 2,000 class-agnostic boxes per PASCAL image in its "fast" mode, the proposals R-CNN
(Girshick et al. 2014, section 2.1) and Fast R-CNN (Girshick 2015, section 4) are built on. It
runs on the CPU, one image at a time: OpenCV's contrib implementation
(cv2.ximgproc.segmentation, package opencv-contrib-python-headless), not cnnbench's.

Tally is how a detector reports what its evaluation forward costs beyond the images/s the task
times: proposals per image, CNN passes per image (R-CNN: one per proposal), and the seconds spent
finding proposals outside the network.
"""

import hashlib
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from cnnbench.errors import CnnbenchError

CACHE_BYTES = 512 * 2**20  # proposals kept per process, at most; the oldest go first beyond it


class Tally:
    """Costs a detector counts in evaluation mode (model.eval()), summed since reset():
    images: images through the network (the Detection task counts them and its seconds: the wall
    time of model(images), on CUDA after synchronising); proposals: boxes handed to the RoI head
    (None: the network has none, a single-shot detector); cnn_passes: CNN forward passes (R-CNN:
    one per warped proposal; None: one per image); proposal_s: seconds finding proposals outside
    the network, a cached image's counted at what computing it took (None: no such step);
    proposal_wall_s: the part of them spent in this forward (a cache hit spends ~0)."""

    def __init__(self, proposals: bool = False, passes: bool = False, search: bool = False):
        self.counts = (proposals, passes, search)
        self.reset()

    def reset(self) -> None:
        proposals, passes, search = self.counts
        self.images, self.seconds, self.batches = 0, 0.0, 0
        self.warm: Optional[tuple] = None  # totals() after the first batch (Detection.predict)
        self.proposals = 0 if proposals else None
        self.cnn_passes = 0 if passes else None
        self.proposal_s = 0.0 if search else None
        self.proposal_wall_s = 0.0

    def totals(self) -> tuple:
        """(images, seconds, proposals, cnn_passes, proposal_s, proposal_wall_s), 0 for None."""
        return (self.images, self.seconds, self.proposals or 0, self.cnn_passes or 0, self.proposal_s or 0.0,
                self.proposal_wall_s)

    def count_proposals(self, boxes: List[torch.Tensor]) -> None:
        """Add one batch's proposals, a (n_i, 4) tensor per image (their sizes: no host read)."""
        if self.proposals is not None:
            self.proposals += sum(len(b) for b in boxes)


def _c_srand():
    """The C library's srand, or None where it cannot be found (then proposals keep OpenCV's order,
    which may differ between runs)."""
    import ctypes
    import ctypes.util

    for name in (None, ctypes.util.find_library("c"), "msvcrt"):
        try:
            return ctypes.CDLL(name).srand
        except (OSError, AttributeError, TypeError):
            continue
    return None


def _check_opencv():
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None or not hasattr(cv2, "ximgproc"):
        raise CnnbenchError(
            "Selective Search needs OpenCV's contrib module (cv2.ximgproc), which is not installed"
            + ("" if cv2 is None else " (this OpenCV lacks the contrib modules)")
            + ". Install it with: pip install opencv-contrib-python-headless (it is in cnnbench's requirements; "
              "a plain opencv-python beside it hides the contrib modules: pip uninstall opencv-python).")
    return cv2


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A normalised (C, H, W) float image as the (H, W, 3) uint8 BGR array OpenCV takes: its values
    stretched to 0-255 over the whole image (one affine map for all channels), 1 channel repeated
    to 3, channels past the third dropped. The dataset's per-channel normalisation is not undone
    (the detector does not know its mean and std), so colours are shifted channel by channel
    (an ImageNet-normalised grey turns bluish); the search compares regions within one image, and
    on fashion_scenes' grey canvases nothing changes."""
    x = image.float()
    lo, hi = x.min(), x.max()
    x = ((x - lo) * (255.0 / max(float(hi - lo), 1e-6))).round().clamp(0, 255).to(torch.uint8)
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return np.ascontiguousarray(x.flip(0).permute(1, 2, 0).numpy())  # RGB -> BGR


class SelectiveSearch(nn.Module):
    """Selective Search as a detector's proposal stage, in place of torchvision's RPN:
    forward(images: ImageList, features, targets=None) -> (proposals: a (n_i, 4) float32 tensor
    of x1, y1, x2, y2 px per image on the images' device, {} (no losses: nothing here learns)).

    mode: "fast" (R-CNN's: 2 colour spaces, HSV and Lab, 2 similarity sets; OpenCV sets
    Felzenszwalb's k to 150 and 300 where the paper's fast mode has 50 and 100) or "quality"
    (more colour spaces, k and similarity sets; slower); top_n: the first top_n boxes of OpenCV's ranking kept
    (R-CNN and Fast R-CNN take ~2,000 per image). Each image is searched once per process: its
    proposals and the seconds they took are cached by the image's bytes (at most CACHE_BYTES), so
    that a second epoch over the same images (dataset.augment=false) or a second evaluation does
    not search again; a cached image's seconds still count in Tally.proposal_s (the cost stated is
    the cost of computing them). An image flipped or cropped by augmentation is a new image.
    An image where the search finds nothing gets one proposal, the whole image.

    Reproducible: OpenCV ranks each region by its level in the hierarchy times the C library's
    std::rand() (the paper's pseudo-random ranking, section 3.3), so the same image would get
    another order, and another top_n, depending on what ran before in the process; the C
    library's generator is seeded (srand(0)) before each image, so an image's proposals are the
    same in every run, resume and sweep job."""

    def __init__(self, mode: str = "fast", top_n: int = 2000, tally: Optional[Tally] = None):
        super().__init__()
        if mode not in ("fast", "quality"):
            raise ValueError(f"Selective Search's mode is fast or quality, not {mode!r}")
        if top_n < 1:
            raise ValueError(f"proposals must be 1 or more (the papers take ~2,000 an image), not {top_n}")
        self.mode, self.top_n = mode, top_n
        self.caching = True  # False: every image searched afresh (cnnbench profile times the search)
        self.fixed: Optional[int] = None  # exactly this many boxes, no search: counting MACs (every_proposal)
        self.tally = tally or Tally(proposals=True, search=True)
        self.cache: "OrderedDict[bytes, Tuple[np.ndarray, float]]" = OrderedDict()
        self.cache_bytes = 0
        self._search = None

    def search(self, image: np.ndarray) -> Tuple[np.ndarray, float, bool]:
        """Proposals of one (H, W, 3) uint8 BGR image: ((n, 4) float32 x1, y1, x2, y2 px, x2/y2
        exclusive; the seconds the search took; whether they came from the cache)."""
        key = hashlib.blake2b(image.tobytes() + repr((image.shape, self.mode)).encode(), digest_size=16).digest()
        hit = self.cache.get(key) if self.caching else None
        if hit is not None:
            self.cache.move_to_end(key)
            return (*hit, True)
        if self._search is None:
            self._search = _check_opencv().ximgproc.segmentation.createSelectiveSearchSegmentation()
            self._srand = _c_srand()
        t0 = time.perf_counter()
        if self._srand is not None:
            self._srand(0)  # OpenCV ranks by level x std::rand(): the same proposals for an image in every run
        self._search.setBaseImage(image)
        if self.mode == "fast":
            self._search.switchToSelectiveSearchFast()
        else:
            self._search.switchToSelectiveSearchQuality()
        rects = self._search.process()  # (n, 4) x, y, w, h, best ranked first
        seconds = time.perf_counter() - t0
        boxes = np.zeros((0, 4), np.float32) if rects is None or len(rects) == 0 else rects[:, :4].astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        self.cache[key] = (boxes, seconds)
        self.cache_bytes += boxes.nbytes + 64
        while self.cache_bytes > CACHE_BYTES and self.cache:
            old, _ = self.cache.popitem(last=False)[1]
            self.cache_bytes -= old.nbytes + 64
        return boxes, seconds, False

    def forward(self, images, features=None, targets=None) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        tensors = images.tensors.detach()
        counting = not self.training
        if counting and tensors.device.type == "cuda":
            torch.cuda.synchronize(tensors.device)  # the backbone's queued work is not the search's time
        t0 = time.perf_counter()
        if self.fixed is not None:
            proposals = [spread_boxes(self.fixed, h, w).to(tensors.device) for h, w in images.image_sizes]
            if counting:
                self.tally.count_proposals(proposals)
            return proposals, {}
        host = tensors.float().cpu()  # one copy for the batch
        proposals, cached = [], 0.0
        for x, (h, w) in zip(host, images.image_sizes):
            boxes, seconds, hit = self.search(to_uint8(x[:, :h, :w]))
            boxes = boxes[:self.top_n] if len(boxes) else np.array([[0, 0, w, h]], np.float32)
            proposals.append(torch.from_numpy(boxes.copy()).to(tensors.device))  # a copy: the cache keeps its own
            cached += seconds if hit else 0.0
        if counting:  # this forward's time, and what the cached images' searches took when they ran
            wall = time.perf_counter() - t0
            self.tally.proposal_wall_s += wall
            self.tally.proposal_s += wall + cached
            self.tally.count_proposals(proposals)
        return proposals, {}


def spread_boxes(n: int, height: int, width: int) -> torch.Tensor:
    """n boxes (n, 4) x1, y1, x2, y2 px inside a height x width image, the same for the same
    arguments: sides from a tenth of the image to all of it, anywhere. What a detector's MACs are
    counted on without data (every_proposal)."""
    g = torch.Generator().manual_seed(0)
    size = torch.rand(n, 2, generator=g) * 0.9 + 0.1  # fractions of (width, height)
    corner = torch.rand(n, 2, generator=g) * (1 - size)
    scale = torch.tensor([float(width), float(height)])
    return torch.cat([corner * scale, (corner + size) * scale], 1)


def every_proposal(model: nn.Module, count: Optional[int] = None) -> Optional[str]:
    """Make model's Selective Search stages give exactly their top_n boxes per image (or count),
    without searching: for `cnnbench models` and `cnnbench profile`, whose random images would give
    Selective Search few regions (a photograph gives ~2,000). Returns what that means for the
    figures, or None where the model has no such stage."""
    stages = [m for m in model.modules() if isinstance(m, SelectiveSearch)]
    for m in stages:
        m.fixed, m.caching = count or m.top_n, False
    if not stages:
        return None
    return (f"Counted and timed at exactly model.proposals ({stages[0].top_n}) proposals per image, spread over the "
            f"image, without Selective Search: it runs per image on the CPU outside the network (a run records its "
            f"seconds as proposal_s_per_image).")
