"""Picture conversions to and from the networks' arrays."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdlite import images

from allocations import peak_allocated


def test_sixteen_bit_grey_is_scaled_not_clipped():
    ramp = Image.fromarray(np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256))
    grey = np.asarray(images.to_rgb(ramp))[0, :, 0]
    assert grey[0] == 0 and grey[-1] == 255 and np.all(np.diff(grey.astype(int)) >= 0)


def test_the_decoded_picture_is_converted_without_a_float_copy():
    array = np.random.default_rng(0).uniform(size=(1, 3, 1024, 1024)).astype(np.float32)
    image, peak = peak_allocated(images.from_array, array, 1000, 1000)
    assert image.size == (1000, 1000)
    assert np.array_equal(np.asarray(image), np.rint(array[0, :, :1000, :1000].transpose(1, 2, 0) * 255))
    assert peak < 0.6 * array.nbytes  # the 8-bit picture (twice, once in PIL) and one band of rows in float32

