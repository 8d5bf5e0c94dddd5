import numpy as np

from pipeline.slices import center_pad, to_uint8, uncenter


def test_center_pad_and_uncenter_round_trip_smaller_and_larger_axes():
    rng = np.random.default_rng(0)
    for shape in [(100, 120), (300, 90), (256, 256), (257, 301)]:
        array = rng.integers(1, 4, shape).astype(np.uint8)
        canvas = center_pad(array, 256)
        assert canvas.shape == (256, 256)
        back = uncenter(canvas, shape)
        kept = min(shape[0], 256), min(shape[1], 256)
        assert (back > 0).sum() == kept[0] * kept[1]  # only cropped margins are lost
        assert np.array_equal(back[back > 0], array[back > 0])


def test_center_pad_centres():
    canvas = center_pad(np.ones((2, 4), np.uint8), 8)
    rows, cols = np.nonzero(canvas)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 4, 2, 5)


def test_to_uint8_scales_and_clips():
    assert to_uint8(np.array([-1.0, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]
