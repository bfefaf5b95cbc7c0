"""Qwen2-VL / Qwen2.5-VL image preprocessing in torch: transformers' tensors, several times faster.

transformers' Qwen2-VL image processor turns each image into `pixel_values` (patches of
`channels * temporal_patch_size * patch_size**2` floats, the frame repeated for the temporal patch)
and `image_grid_thw`. Without torchvision it runs its PIL/numpy backend, which at a realistic
resolution (about 1 MP) spends most of a DataLoader worker's time in numpy passes over the float
image: rescale, normalize, a transposed copy of the whole image, then the temporal copy (timings:
benchmarks/RESULTS.md, "Loader").

`QwenImageProcessor` gives the same tensors with less work:
* the resize is transformers' own call, PIL bicubic on the uint8 image to the size that the wrapped
  processor's own module computes (its `smart_resize`), so it is bit-identical; it is skipped when
  the image already has that size, as pre-scaled shards do (`pipelines.images.snapped_size`);
* the patch permutation runs on the uint8 pixels (a quarter of the bytes of float32);
* rescale and normalize are one multiply-add on a contiguous float frame, and one broadcast copy
  writes it into every temporal slot of the batch's output tensor; nothing is concatenated, and in a
  DataLoader worker that tensor is allocated in shared memory (as torch's default_collate does), so
  the batch's pixels are not copied again on their way to the main process.
The values equal transformers' to float rounding (max abs difference ~5e-7, see the tests), and
they do not depend on whether torchvision is installed, so a laptop and a GPU node feed a model the
same tensors. transformers' torchvision backend resizes with torchvision's bicubic, which differs
from PIL's; it too skips the resize of an image already at the target size (torchvision's `resize`
returns such an image unchanged), so on the training shards' grid-sized images the two backends
also agree to float rounding; they differ where an image has to be resized, as evaluation's are.

`install(processor)` returns a shallow copy of a transformers Qwen2-VL processor whose image
processor is wrapped; anything the wrapper does not reproduce exactly (other resampling, switched
off steps, numpy inputs, call-time overrides) is handed to transformers' processor unchanged.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings

import numpy as np
import torch
from PIL import Image

# the image-processor classes (slow, PIL and torchvision backends, transformers 4.x and 5.x) whose
# computation this module reproduces
SUPPORTED = {"Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil", "Qwen2VLImageProcessorFast"}


def _size_bounds(reference) -> tuple[int, int]:
    """(min_pixels, max_pixels) from a transformers Qwen2-VL image processor of any 4.4x-5.x version."""
    size = dict(getattr(reference, "size", None) or {})
    low = size.get("shortest_edge", size.get("min_pixels", getattr(reference, "min_pixels", None)))
    high = size.get("longest_edge", size.get("max_pixels", getattr(reference, "max_pixels", None)))
    if low is None or high is None:
        raise ValueError(f"cannot read min/max pixels from {type(reference).__name__}.size={size}")
    return int(low), int(high)


def _is_bicubic(resample) -> bool:
    """PIL's BICUBIC as a PIL enum or int, or torchvision's InterpolationMode.BICUBIC."""
    if str(getattr(resample, "value", "")).lower() == "bicubic":
        return True
    try:
        return int(resample) == int(Image.Resampling.BICUBIC)
    except (TypeError, ValueError):
        return False


def _smart_resize_of(reference):
    """transformers' `smart_resize` from the module that defines `reference`'s class (the size rule
    that processor applies, in whatever transformers version is installed), or None."""
    resize = getattr(sys.modules.get(type(reference).__module__), "smart_resize", None)
    return resize if callable(resize) else None


def supports(reference) -> bool:
    """Whether `reference` (a transformers image processor) is one whose computation we reproduce."""
    if type(reference).__name__ not in SUPPORTED or _smart_resize_of(reference) is None:
        return False
    flags = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")
    if not all(getattr(reference, f, False) for f in flags):
        return False
    if not _is_bicubic(getattr(reference, "resample", None)):
        return False
    if not math.isclose(float(reference.rescale_factor), 1 / 255, rel_tol=1e-9):
        return False
    try:
        _size_bounds(reference)
    except ValueError:
        return False
    return True


class QwenImageProcessor:
    """Drop-in for a transformers Qwen2-VL image processor (see the module docstring).

    Called like the processor it wraps (`(images, return_tensors="pt")`), it returns a
    `BatchFeature` with `pixel_values` (float32 [patches, C*T*P*P]) and `image_grid_thw` (int64
    [images, 3]). Attributes (merge_size, patch_size, ...) are the wrapped processor's.
    """

    def __init__(self, reference):
        if not supports(reference):
            raise ValueError(f"{type(reference).__name__} with these settings is not reproduced; use it directly")
        self.reference = reference
        self.smart_resize = _smart_resize_of(reference)
        self.min_pixels, self.max_pixels = _size_bounds(reference)
        self.patch = int(reference.patch_size)
        self.merge = int(reference.merge_size)
        self.temporal = int(reference.temporal_patch_size)
        mean = torch.tensor(reference.image_mean, dtype=torch.float64)
        std = torch.tensor(reference.image_std, dtype=torch.float64)
        # (x / 255 - mean) / std == x * scale + offset, per channel
        self.scale = (1.0 / (255.0 * std)).to(torch.float32).view(1, 3, 1)
        self.offset = (-mean / std).to(torch.float32).view(1, 3, 1)

    def __getattr__(self, name):
        if name.startswith("__") or "reference" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.reference, name)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) this processor resizes an image of `width` x `height` to."""
        h, w = self.smart_resize(height, width, factor=self.patch * self.merge, min_pixels=self.min_pixels,
                                 max_pixels=self.max_pixels)
        return w, h

    def _rgb(self, image: Image.Image) -> Image.Image:
        if image.mode == "RGB":
            return image
        from transformers.image_transforms import convert_to_rgb  # transformers' own rule (alpha on white)

        return convert_to_rgb(image)

    def __call__(self, images, return_tensors=None, **kwargs):
        flat = images if isinstance(images, (list, tuple)) else [images]
        if kwargs or return_tensors not in (None, "pt") or not all(isinstance(im, Image.Image) for im in flat):
            return self.reference(images, return_tensors=return_tensors, **kwargs)
        from transformers.image_processing_utils import BatchFeature

        resized, grids = [], []
        for image in flat:
            image = self._rgb(image)
            w, h = self.target_size(image.width, image.height)
            if (w, h) != image.size:
                image = image.resize((w, h), Image.Resampling.BICUBIC)
            resized.append(image)
            grids.append((1, h // self.patch, w // self.patch))
        rows = sum(g[1] * g[2] for g in grids)
        p, t = self.patch, self.temporal
        out = _output_tensor((rows, 3, t, p * p))
        start = 0
        for image, (_, gh, gw) in zip(resized, grids):
            n = gh * gw
            self._patchify(np.asarray(image), gh, gw, out[start:start + n])
            start += n
        pixel_values = out.view(rows, 3 * t * p * p)
        grid_thw = torch.tensor(grids, dtype=torch.int64).view(len(grids), 3)
        return BatchFeature(data={"pixel_values": pixel_values, "image_grid_thw": grid_thw})

    def _patchify(self, pixels: np.ndarray, gh: int, gw: int, out: torch.Tensor) -> None:
        """Write one image's patches into `out` [gh*gw, 3, T, P*P]: rows ordered by merge window
        (gh/m, gw/m, m, m), each row channel-major, the frame repeated for the temporal patch."""
        p, m, n = self.patch, self.merge, gh * gw
        with warnings.catch_warnings():  # PIL's buffer is read-only; it is only read here
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(pixels)  # [H, W, 3] uint8
        # the permuted copy on uint8 (a quarter of float32's bytes) ...
        x = x.view(gh // m, m, p, gw // m, m, p, 3).permute(0, 3, 1, 4, 6, 2, 5).reshape(n, 3, 1, p * p)
        # ... then (x / 255 - mean) / std in place on one contiguous frame (writing through a strided
        # view of `out` is 3x slower), and one broadcast copy into every temporal slot
        frame = x.float()
        frame.mul_(self.scale.view(1, 3, 1, 1)).add_(self.offset.view(1, 3, 1, 1))
        out.copy_(frame.expand(out.shape))


def _output_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor; in a DataLoader worker, in shared memory, as torch's
    default_collate does: the worker then writes the batch's pixels once, instead of once here and
    once more when the batch is moved to shared memory to reach the main process."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    numel = math.prod(shape)
    storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=torch.float32).new(storage).view(shape)


def cap_max_pixels(processor, cap: int):
    """`processor`, or a shallow copy whose Qwen2-VL / Qwen2.5-VL image processor resizes to at most
    `cap` pixels (its `longest_edge`, i.e. max_pixels, lowered; never below its min_pixels), as
    VLM2Vec passes `max_pixels` to the processor. Without it, an image the collator scaled to `cap`
    pixels off the patch grid is rounded to the NEAREST grid size by `smart_resize`, up to ~2 % more
    image tokens than `cap` (1344 x 1344 at 1003520: 1008 x 1008, where the pre-scaled training shards
    hold 980 x 980). Returns (processor, the image processor's own max_pixels) for the caller's log."""
    reference = getattr(processor, "image_processor", None)
    if reference is None or type(reference).__name__ not in SUPPORTED:
        return processor, None
    try:
        low, high = _size_bounds(reference)
    except ValueError:
        return processor, None
    if high <= cap:
        return processor, high
    capped = copy.copy(reference)
    size = reference.size
    values = dict(size) if isinstance(size, dict) else {k: v for k, v in vars(size).items()}
    limit = max(low, int(cap))
    for key in ("longest_edge", "max_pixels"):
        if values.get(key) is not None:
            values[key] = limit
    capped.size = type(size)(**values) if not isinstance(size, dict) else values
    if getattr(reference, "max_pixels", None) is not None:
        capped.max_pixels = limit
    out = copy.copy(processor)
    out.image_processor = capped
    return out, high


def install(processor):
    """A shallow copy of `processor` with its image processor replaced by `QwenImageProcessor`, or
    `processor` itself when its image processor is not one this module reproduces."""
    reference = getattr(processor, "image_processor", None)
    if reference is None or isinstance(reference, QwenImageProcessor) or not supports(reference):
        return processor
    fast = copy.copy(processor)
    fast.image_processor = QwenImageProcessor(reference)
    return fast
