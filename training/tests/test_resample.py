"""The one resampling definition: what every loader feeds the model (edgekd_train.data.resample)."""

import numpy as np
from PIL import Image

from edgekd_train.data.image_folder import load_image_folder
from edgekd_train.data.resample import center_crop_box, letterbox_box, model_uint8


def test_shrinking_fine_stripes_is_antialiased():
    stripes = np.tile(np.array([0, 255], dtype=np.uint8), (480, 320))  # 640x480, 1-px columns
    out = model_uint8(Image.fromarray(stripes), 28, 28, "gray", "stretch")
    assert out.shape == (1, 28, 28)
    assert np.abs(out[:, :, 1:-1].astype(int) - 128).max() <= 1  # averaged, not sampled


def test_colour_is_converted_first_as_pillow_does_and_gray_replicates():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    assert model_uint8(Image.fromarray(rgb), 4, 6, "gray", "stretch").ravel().tolist() == [18] * 24
    bgr = model_uint8(Image.fromarray(rgb), 2, 3, "bgr", "stretch")
    assert bgr[:, 0, 0].tolist() == [30, 20, 10]
    gray = model_uint8(Image.fromarray(np.full((5, 5), 77, np.uint8)), 3, 3, "rgb", "letterbox")
    assert gray.shape == (3, 3, 3) and (gray == 77).all()


def test_geometry_of_center_crop_and_letterbox():
    assert center_crop_box(480, 640, 224, 224) == (80.0, 0.0, 560.0, 480.0)
    assert letterbox_box(17, 33, 24, 40) == (1, 0, 21, 40)
    out = model_uint8(Image.fromarray(np.full((17, 33), 200, np.uint8)), 24, 40, "gray", "letterbox")
    assert (out[0, 0] == 0).all() and (out[0, 1:22] == 200).all() and (out[0, 22:] == 0).all()


def test_16_bit_gray_is_resized_at_16_bits_not_clipped(tmp_path):
    # Pillow's convert("L") clips I;16 at 255, so this image used to train as all white.
    a = np.full((20, 20), 32896, dtype=np.uint16)  # 128 * 257
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(a).save(tmp_path / "train" / "a" / "x.png")
    x, y, classes = load_image_folder(tmp_path / "train", 10, "gray")
    assert x.shape == (1, 1, 10, 10) and (x == 128).all() and classes == ["a"]
