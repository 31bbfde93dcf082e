"""Preprocessing numbers the Rust engine reproduces."""
import numpy as np

from proxyseg_model.preprocess import (PIXEL_MEAN, PIXEL_STD, percentile_window, postprocess, prepare_image,
                                       prepare_mask, resized_size, to_display, voi_linear)


def test_voi_linear_formula():
    x = np.array([0, 99.5, 100, 100.5, 200], dtype=np.float32)
    y = voi_linear(x, center=100, width=101)  # lower edge c-0.5-(w-1)/2 = 49.5
    expect = ((x - 99.5) / 100 + 0.5) * 255
    assert np.allclose(y, np.clip(expect, 0, 255))
    assert voi_linear(np.array([10.0]), 100, 20)[0] == 0 and voi_linear(np.array([300.0]), 100, 20)[0] == 255
    assert list(voi_linear(np.array([99.0, 99.5, 100.0]), 100, 1)) == [0, 0, 255]


def test_percentile_and_monochrome1():
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    y = percentile_window(x)
    assert y.min() == 0 and y.max() == 255
    d1 = to_display(x, "MONOCHROME1")
    d2 = to_display(x, "MONOCHROME2")
    assert d1.shape == (10, 100, 3) and np.allclose(d1, 255 - d2)
    assert np.all(percentile_window(np.full((4, 4), 7.0)) == 0)


def test_resize_pad_normalise():
    assert resized_size(288, 320, 256) == (230, 256)
    assert resized_size(256, 320, 256) == (205, 256)
    disp = np.full((288, 320, 3), 100.0, dtype=np.float32)
    img, hw = prepare_image(disp, 256)
    assert img.shape == (3, 256, 256) and hw == (230, 256)
    assert np.allclose(img[:, :230, :], ((100 - PIXEL_MEAN) / PIXEL_STD)[:, None, None], atol=1e-5)
    assert np.all(img[:, 230:, :] == 0)
    m = np.zeros((288, 320), np.uint8)
    m[:144] = 1
    pm = prepare_mask(m, 256)
    assert set(np.unique(pm)) <= {0.0, 1.0} and pm[:100].all() and not pm[130:].any()


def test_postprocess_geometry():
    logits = -np.ones((2, 1, 64, 64), np.float32)
    logits[0, 0, :32] = 1  # upper half of the padded frame
    masks, lg = postprocess(logits, (230, 256), (288, 320), 256)
    assert masks.shape == (2, 288, 320) and masks.dtype == np.uint8
    assert masks[1].sum() == 0
    # upper 128 of 230 resized rows -> about 160 of 288 original rows
    assert abs(masks[0][:, 0].sum() - 160) <= 3
