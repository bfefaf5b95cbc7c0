"""Phi3VImageProcessor of the tiny Phi-3-V stand-in: Phi-3-V's HD transform in small.

An image is resized to a grid of at most `num_crops` crops of `crop_side` px (its aspect ratio
kept as far as whole crops allow, as Phi-3-V's `HD_transform`), plus one global crop (the whole
image at `crop_side`, first); crops are padded with zero crops to `num_crops + 1`, so images of any
size stack. Each real crop gives (crop_side / patch)^2 image tokens (`num_img_tokens`).
"""

import math

import numpy as np
import torch
from PIL import Image


class Phi3VImageProcessor:
    def __init__(self, num_crops=4, crop_side=16, patch=8, **kwargs):
        self.num_crops, self.crop_side, self.patch = int(num_crops), int(crop_side), int(patch)

    def grid(self, width, height):
        """(columns, rows) of crops for a `width` x `height` image."""
        ratio = max(width, height) / min(width, height)
        scale = 1
        while (scale + 1) * math.ceil((scale + 1) / ratio) <= self.num_crops:
            scale += 1
        long, short = scale, math.ceil(scale / ratio)
        return (long, short) if width >= height else (short, long)

    def _tensor(self, image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)

    def __call__(self, images, return_tensors=None, **kwargs):
        side = self.crop_side
        pixel_values, sizes, tokens = [], [], []
        for image in images:
            cols, rows = self.grid(*image.size)
            full = self._tensor(image.resize((cols * side, rows * side), Image.BICUBIC))
            crops = [self._tensor(image.resize((side, side), Image.BICUBIC))]
            crops += [full[:, r * side:(r + 1) * side, c * side:(c + 1) * side] for r in range(rows) for c in range(cols)]
            crops += [torch.zeros(3, side, side)] * (self.num_crops + 1 - len(crops))
            pixel_values.append(torch.stack(crops))
            sizes.append([rows * side, cols * side])
            tokens.append((rows * cols + 1) * (side // self.patch) ** 2)
        return dict(pixel_values=torch.stack(pixel_values), image_sizes=torch.tensor(sizes),
                    num_img_tokens=tokens)

    def to_dict(self):
        return dict(num_crops=self.num_crops, crop_side=self.crop_side, patch=self.patch)
