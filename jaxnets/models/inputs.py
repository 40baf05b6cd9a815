"""The one rule by which an image model states the input it is built with."""

from __future__ import annotations


class SquareImageInput:
    """Mixin for a flax image model with `image_size` and `in_channels` fields: gives its `input_shape`."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One example as `models.init` builds the model: `(image_size, image_size, in_channels)`, NHWC."""
        return (self.image_size, self.image_size, self.in_channels)  # type: ignore[attr-defined]
