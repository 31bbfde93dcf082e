"""Sequences from a still (issue 15 item 3): the masks move with the image, frames differ,
and the same seed gives the same sequence."""
import numpy as np

from proxyseg_model.sequences import instability, make_sequence


def still():
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((yy - 40) ** 2 + (xx - 60) ** 2) < 20 ** 2
    img = np.repeat((40 + 180 * disc)[..., None], 3, 2).astype(np.float32)
    return img, disc[None].astype(np.uint8)


def test_masks_follow_the_moving_image():
    img, masks = still()
    seq, truth = make_sequence(img, masks, frames=6, seed=3)
    assert seq.shape == (6, 96, 128, 3) and truth.shape == (6, 1, 96, 128)
    for t in range(6):
        bright = seq[t, ..., 0] > 120  # the disc, after noise and drift
        inside = bright[truth[t, 0] > 0].mean()
        outside = bright[truth[t, 0] == 0].mean()
        assert inside > 0.9 and outside < 0.05, (t, inside, outside)
    # the probe moved: the truth is not the same in every frame, but stays mostly in view
    assert instability(truth[:, 0]) > 0.01
    assert all(truth[t, 0].sum() > 0.6 * masks[0].sum() for t in range(6))


def test_same_seed_same_sequence_and_speckle_for_ultrasound():
    img, masks = still()
    a, _ = make_sequence(img, masks, frames=3, seed=1, ultrasound=True)
    b, _ = make_sequence(img, masks, frames=3, seed=1, ultrasound=True)
    c, _ = make_sequence(img, masks, frames=3, seed=1, ultrasound=False)
    assert np.array_equal(a, b)
    assert a[0][img[..., 0] > 100].std() > c[0][img[..., 0] > 100].std()


def test_instability_of_a_still_mask_is_zero():
    m = np.zeros((4, 10, 10), np.uint8)
    m[:, 2:6, 2:6] = 1
    assert instability(m) == 0.0
    m[1] = 0
    assert instability(m) > 0.5
