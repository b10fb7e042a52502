"""The learned method's hyper-synthesis in integers: exact whatever the BLAS, and refusing layers whose
sums could leave the exact range. Pure numpy: no model, no torch."""

from __future__ import annotations

import numpy as np
import pytest

from sdlite.errors import SdliteError
from sdlite.methods.integer_network import ACTIVATION_LIMIT, IntegerLayer, IntegerNetwork


def reference(x: np.ndarray, layer: IntegerLayer) -> np.ndarray:
    """The layer by its definition, in Python integers (no float anywhere)."""
    outputs, inputs, kernel, _ = layer.weight.shape
    pad = kernel // 2
    channels, height, width = x.shape
    out = np.zeros((outputs, height, width), dtype=object)
    for o in range(outputs):
        for y in range(height):
            for xx in range(width):
                total = int(layer.bias[o])
                for i in range(inputs):
                    for dy in range(kernel):
                        for dx in range(kernel):
                            sy, sx = y + dy - pad, xx + dx - pad
                            if 0 <= sy < height and 0 <= sx < width:
                                total += int(layer.weight[o, i, dy, dx]) * int(x[i, sy, sx])
                value = (total * int(layer.multiplier[o]) + (1 << (layer.shift - 1))) >> layer.shift
                out[o, y, xx] = min(max(value, 0), ACTIVATION_LIMIT) if layer.relu else value
    return out.astype(np.int64)


def random_layer(rng, inputs: int, outputs: int, kernel: int, relu: bool, upsample: bool = False) -> IntegerLayer:
    return IntegerLayer(rng.integers(-127, 128, (outputs, inputs, kernel, kernel)),
                        rng.integers(-(1 << 30), 1 << 30, outputs), rng.integers(1, 1 << 19, outputs),
                        shift=int(rng.integers(20, 30)), relu=relu, upsample=upsample)


@pytest.mark.parametrize("relu", [True, False])
def test_a_layer_gives_the_exact_integers_of_its_definition(relu):
    rng = np.random.default_rng(0)
    layer = random_layer(rng, 5, 3, 3, relu)
    x = rng.integers(0, ACTIVATION_LIMIT + 1, (5, 4, 6))  # the largest activations: the sums reach ~2^28
    assert np.array_equal(layer(x), reference(x, layer))


def test_upsampling_puts_channel_4c_2i_j_at_2y_i_2x_j():
    layer = IntegerLayer(np.eye(4, dtype=np.int64)[:, :, None, None], np.zeros(4, np.int64), np.full(4, 2),
                         shift=1, relu=False, upsample=True)
    x = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    out = layer(x)
    assert out.shape == (1, 4, 6)
    for c in range(4):
        i, j = divmod(c, 2)
        assert np.array_equal(out[0, i::2, j::2], x[c])


def test_a_network_whose_sums_could_overflow_is_refused():
    wide = IntegerLayer(np.full((1, 1 << 14, 15, 15), 127), np.zeros(1, np.int64), np.ones(1, np.int64), shift=1,
                        relu=True, upsample=False)
    with pytest.raises(SdliteError, match="overflow"):
        IntegerNetwork([IntegerLayer(np.ones((1 << 14, 1, 1, 1)), np.zeros(1 << 14, np.int64), np.ones(1 << 14, np.int64),
                                     shift=1, relu=True, upsample=False), wide])


def test_layers_that_do_not_fit_together_are_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(SdliteError, match="fit together"):
        IntegerNetwork([random_layer(rng, 2, 3, 3, True), random_layer(rng, 4, 2, 1, False)])


def test_hyper_prior_values_beyond_the_escape_range_are_refused():
    rng = np.random.default_rng(2)
    network = IntegerNetwork([random_layer(rng, 1, 1, 1, False)])
    with pytest.raises(SdliteError, match="out of range"):
        network(np.full((1, 1, 1), 1 << 13))
