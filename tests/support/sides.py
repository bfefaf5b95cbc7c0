"""Record sides as the collator (`trainer.model.inputs.Collator`) takes them, for model tests.

    side("<|image_1|>\\nRepresent the given image\\n")      # the image token in `raw` sets has_image_token
    Collator(backbone)(SIDES, IMAGES)                      # a mixed batch: two image sides, two text sides
"""

from __future__ import annotations

from PIL import Image


def side(raw: str, instruction: str = "", text: str = "", image: dict | None = None) -> dict:
    """A record side holding `raw` as it stands (no template), `image` its image reference if any."""
    return dict(raw=raw, instruction=instruction, text=text, has_image_token="<|image_1|>" in raw,
                template="", image=image)


SIDES = [
    side("<|image_1|>\nRepresent the given image for classification\n"),
    side("Find me an everyday image that matches the given caption: a red circle.\n", text="a red circle."),
    side("<|image_1|>\nRepresent the given image with the following question: what colour is it?\n",
         text="what colour is it?"),
    side("blue\n", text="blue"),
]
IMAGES = [Image.new("RGB", (40, 30), "red"), None, Image.new("RGB", (64, 64), "blue"), None]  # SIDES' images
