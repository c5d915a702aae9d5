"""The model server and the Spark executors turn the same image bytes into the same pixels, bit for bit."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from steerpatch.compile.metadata import Preprocessing
from steerpatch.serve.preprocess import image_to_pixels
from steerpatch.spark.runner import Preprocess, decode_batch, preprocess_image


def _encoded(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(sum(size) + len(mode))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = image.quantize(16) if mode == "P" else image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


IMAGES = {
    "wide-rgb": _encoded("RGB", (57, 31)),
    "tall-rgba": _encoded("RGBA", (23, 48)),
    "square-exact": _encoded("RGB", (32, 32)),
    "palette": _encoded("P", (40, 41)),
    "grey-jpeg": _encoded("L", (45, 33), "JPEG"),
}
SPECS = [
    (32, "bicubic", "shortest", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    (24, "bilinear", "squash", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    (20, "nearest", "shortest", (0.1, 0.2, 0.3), (0.9, 0.8, 0.7)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_server_and_spark_pixels_are_identical(name, spec):
    size, interpolation, resize_mode, mean, std = spec
    data = IMAGES[name]
    served = image_to_pixels(data, Preprocessing(image_size=size, mean=list(mean), std=list(std),
                                                 interpolation=interpolation, resize_mode=resize_mode))
    scored = preprocess_image(data, Preprocess(image_size=size, mean=mean, std=std,
                                               interpolation=interpolation, resize_mode=resize_mode))
    assert served.shape == (1, 3, size, size) and served.dtype == scored.dtype == np.float32
    assert served[0].tobytes() == scored.tobytes()


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_pixels_match_open_clip(resize_mode):
    from open_clip.transform import image_transform

    transform = image_transform(32, is_train=False, resize_mode=resize_mode)
    for data in IMAGES.values():
        expected = transform(Image.open(io.BytesIO(data))).numpy()
        np.testing.assert_allclose(preprocess_image(data, Preprocess(32, resize_mode=resize_mode)), expected, atol=1e-6)


def test_executors_run_the_transform_without_steerpatch(tmp_path):
    """What `ship_runner` sends unpickles and runs where steerpatch cannot be imported."""
    from pyspark import cloudpickle

    from steerpatch.spark.session import ship_runner

    ship_runner()
    spec = Preprocess(image_size=16)
    images = [IMAGES["wide-rgb"], b"not an image"]
    (tmp_path / "job.pkl").write_bytes(cloudpickle.dumps((decode_batch, spec, images)))
    code = (
        "import pickle, sys\n"
        "sys.modules['steerpatch'] = None  # any import of steerpatch now fails\n"
        f"fn, spec, images = pickle.loads(open({str(tmp_path / 'job.pkl')!r}, 'rb').read())\n"
        "pixels, errors = fn(images, spec)\n"
        f"pickle.dump((pixels, errors), open({str(tmp_path / 'out.pkl')!r}, 'wb'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    pixels, errors = pickle.loads((tmp_path / "out.pkl").read_bytes())  # written by the test's own child
    expected, expected_errors = decode_batch(images, spec)
    assert pixels.tobytes() == expected.tobytes() and np.any(pixels[0] != 0)
    assert errors[0] is expected_errors[0] is None and errors[1].startswith("not a decodable image")


# the sizes a JPEG decodes at after `draft(image, 64)`: the largest of 1/8, 1/4, 1/2 scale whose shorter
# side stays >= 2 x 64 = 128 (sides rounded up, as libjpeg does); too small to reduce: left as it is
DRAFTED = {
    (1024, 768): (256, 192),   # 1/4: 1/8 would give a 96-pixel side
    (768, 1024): (192, 256),
    (1000, 750): (250, 188),   # 750 / 4 = 187.5, rounded up
    (4032, 3024): (504, 378),  # 1/8
    (600, 300): (300, 150),    # 1/2
    (300, 200): (300, 200),    # 200 < 2 x 128: not reduced
}


@pytest.mark.parametrize("size", sorted(DRAFTED), ids=lambda s: f"{s[0]}x{s[1]}")
def test_draft_reduces_a_jpeg_as_far_as_twice_the_input_size_allows(size):
    from steerpatch.pixels import DRAFT_FACTOR, draft

    assert DRAFT_FACTOR == 2  # the table above is for factor 2
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, format="JPEG")
    image = draft(Image.open(buffer), 64)
    image.load()
    assert image.size == DRAFTED[size] and image.mode == "RGB"


def test_draft_leaves_other_formats_exact():
    from steerpatch.pixels import draft

    data = _encoded("RGB", (1024, 768), "PNG")
    image = draft(Image.open(io.BytesIO(data)), 64)
    image.load()
    assert image.size == (1024, 768)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(data))))
