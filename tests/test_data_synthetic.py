"""jaxnets.data.synthetic_batches: the one recipe for random stand-in batches (bench, pipeline bench, tests)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import data


def test_shapes_dtypes_labels_and_mask():
    (batch,) = data.synthetic_batches((4, 4, 3), 6, 1, num_classes=3, seed=1)
    assert batch.image.shape == (6, 4, 4, 3) and batch.image.dtype == jnp.float32
    assert batch.label.dtype == jnp.int32 and set(np.asarray(batch.label)) <= {0, 1, 2}
    assert batch.mask.dtype == jnp.bool_ and bool(batch.mask.all())
    assert data.synthetic_batch((5,), 2, dtype=jnp.bfloat16).image.dtype == jnp.bfloat16


def test_seeded_and_batch_i_independent_of_how_many():
    three = data.synthetic_batches((5,), 4, 3, seed=7)
    again = data.synthetic_batches((5,), 4, 2, seed=7)
    for a, b in zip(three, again, strict=False):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(data.synthetic_batch((5,), 4, seed=7).image, three[0].image)
    assert not np.array_equal(three[0].image, three[1].image)
    assert not np.array_equal(three[0].image, data.synthetic_batch((5,), 4, seed=8).image)


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(n_batches=0), dict(num_classes=0)])
def test_bad_sizes_are_refused(kwargs):
    args = dict(shape=(3,), batch_size=2, n_batches=1) | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        data.synthetic_batches(**args)
