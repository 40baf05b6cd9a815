"""The numbers the notebooks print about the texts' examples, asserted."""

from __future__ import annotations

import numpy as np

from jaxnets import lessons, models


def test_nonscalar_backward_is_the_texts_vjp():
    z, dx, dy = lessons.nonscalar_backward(x=[1.0, 2.0], y=[2.0, 3.0], v=[1.0, 1.0])
    np.testing.assert_allclose(z, [3 * 1 - 4, 3 * 4 - 9])
    np.testing.assert_allclose(dx, [6.0, 12.0])
    np.testing.assert_allclose(dy, [-4.0, -6.0])
    _, dx2, _ = lessons.nonscalar_backward(v=[0.5, 2.0])  # the gradient= vector weights each output
    np.testing.assert_allclose(dx2, [3.0, 24.0])


def test_sgd_update_is_w_minus_lr_grad():
    new = lessons.sgd_update({"w": np.array([1.0, 2.0])}, {"w": np.array([0.1, -0.2])}, 0.1)
    np.testing.assert_allclose(new["w"], [0.99, 2.02])


def test_linear_regression_recovers_slope_2_intercept_5():
    x, y = lessons.linear_regression_data(n=100, slope=2.0, intercept=5.0, noise=0.5, seed=0)
    fit = lessons.fit_linear_regression(x, y, lr=0.5, steps=500)
    closed_form = np.polyfit(x[:, 0], y[:, 0], 1)  # least squares: what SGD must converge to
    assert abs(fit.slope - closed_form[0]) < 0.05 and abs(fit.intercept - closed_form[1]) < 0.05
    assert abs(fit.slope - 2.0) < 0.3 and abs(fit.intercept - 5.0) < 0.3
    assert fit.losses[-1] < 0.01 * fit.losses[0]


def test_small_mlps_of_texts_002_and_004_learn():
    xs = np.linspace(-3, 3, 200, dtype=np.float32)[:, None]
    model = models.create("mlp", num_layers=1, hidden_size=2, input_dim=1, output_dim=1, activation="sigmoid")
    _, losses = lessons.fit_full_batch(model, xs, np.tanh(xs), loss="mse", lr=0.05, steps=500)
    assert losses[-1] < 0.2 * losses[0]
    xc, yc = lessons.two_moons(n=300, seed=0)
    clf = models.create("mlp", num_layers=1, hidden_size=10, input_dim=2, output_dim=1)
    state, _ = lessons.fit_full_batch(clf, xc, yc, loss="bce", lr=0.05, steps=500)
    assert np.mean((np.asarray(clf.apply(state.variables, xc)) > 0) == (yc > 0.5)) > 0.8


def test_confusion_matrix():
    matrix = lessons.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), 3)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
