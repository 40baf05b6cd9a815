"""The one rule by which an image model states the input it is built with."""

from __future__ import annotations

from typing import Any


def square_image_shape(model: Any) -> tuple[int, int, int]:
    """One example as `models.init` builds the model: `(image_size, image_size, in_channels)`, NHWC.

    The `input_shape` property of every image model (`input_shape = property(square_image_shape)`).
    """
    return (model.image_size, model.image_size, model.in_channels)
