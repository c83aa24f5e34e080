"""Input conversion, no server."""
import io

import numpy as np
import pytest

from rewarddance import ImageConversionError, to_image_message
from rewarddance._images import numpy_to_rgb8

PIL = pytest.importorskip("PIL.Image")


def raw(msg):
    assert msg.WhichOneof("source") == "rgb8", msg.WhichOneof("source")
    r = msg.rgb8
    return np.frombuffer(r.data, np.uint8).reshape(r.height, r.width, 3)


def test_paths_and_bytes_are_sent_as_they_are(fixture_pngs, tmp_path):
    p = fixture_pngs[0]
    data = p.read_bytes()
    assert to_image_message(p).encoded == data
    assert to_image_message(str(p)).encoded == data
    assert to_image_message(data).encoded == data
    assert to_image_message(bytearray(data)).encoded == data
    with pytest.raises(ImageConversionError, match="cannot read"):
        to_image_message(tmp_path / "missing.png")
    with pytest.raises(ImageConversionError, match="empty"):
        to_image_message(b"")


def test_numpy_uint8_is_raw_rgb8():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    m = to_image_message(a)
    assert (m.rgb8.width, m.rgb8.height) == (7, 5)
    np.testing.assert_array_equal(raw(m), a)
    # Non-contiguous input (a crop with a stride) is copied right.
    np.testing.assert_array_equal(raw(to_image_message(a[:, ::2])), a[:, ::2])


def test_numpy_float_rounds():
    a = np.array([[[0.0, 0.5, 1.0], [1.2, -0.3, 0.2]]], dtype=np.float32)
    np.testing.assert_array_equal(raw(to_image_message(a)), [[[0, 128, 255], [255, 0, 51]]])
    # Explicit [-1, 1] range.
    b = np.array([[[-1.0, 0.0, 1.0]]])
    np.testing.assert_array_equal(numpy_to_rgb8(b, (-1.0, 1.0)), [[[0, 128, 255]]])
    with pytest.raises(ImageConversionError, match="NaN"):
        to_image_message(np.full((2, 2, 3), np.nan))


def test_gray_and_alpha():
    g = np.array([[0, 200]], dtype=np.uint8)
    np.testing.assert_array_equal(raw(to_image_message(g)), [[[0, 0, 0], [200, 200, 200]]])
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    np.testing.assert_array_equal(raw(to_image_message(rgba)), [[[255, 255, 255], [255, 0, 0], [127, 127, 127]]])
    with pytest.raises(ImageConversionError, match="channels"):
        to_image_message(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageConversionError, match="empty"):
        to_image_message(np.zeros((0, 2, 3), np.uint8))


def test_pil_matches_decoded_png(fixture_pngs):
    for p in fixture_pngs:
        im = PIL.open(p)
        m = to_image_message(im)
        assert m.WhichOneof("source") == "rgb8"
        assert (m.rgb8.width, m.rgb8.height) == im.size


def test_large_images_are_png_encoded_losslessly():
    a = np.random.default_rng(1).integers(0, 8, (64, 64, 3), dtype=np.uint8)  # compressible
    m = to_image_message(a, raw_max_bytes=1000)
    assert m.WhichOneof("source") == "encoded"
    assert m.encoded[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(PIL.open(io.BytesIO(m.encoded)).convert("RGB")), a)
    # Below the threshold: raw.
    assert to_image_message(a, raw_max_bytes=64 * 64 * 3).WhichOneof("source") == "rgb8"


def test_unsupported_type():
    with pytest.raises(TypeError, match="unsupported image type"):
        to_image_message(42)


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    chw01 = torch.from_numpy(a).permute(2, 0, 1).float() / 255.0
    np.testing.assert_array_equal(raw(to_image_message(chw01)), a)
    chw11 = chw01 * 2.0 - 1.0
    assert float(chw11.min()) < 0
    np.testing.assert_array_equal(raw(to_image_message(chw11)), a)
    bf16 = chw01.to(torch.bfloat16)
    want = np.rint(np.clip(bf16.float().permute(1, 2, 0).numpy(), 0, 1) * 255)
    np.testing.assert_array_equal(raw(to_image_message(bf16)), want)
    np.testing.assert_array_equal(raw(to_image_message(torch.from_numpy(a).permute(2, 0, 1).contiguous())), a)


def test_torch_batch_range_is_decided_once():
    torch = pytest.importorskip("torch")
    from rewarddance import _core

    dark = torch.full((3, 2, 2), -0.5)
    bright = torch.full((3, 2, 2), 0.5)  # in [-1, 1]: 0.5 -> 191; alone it would read as [0, 1] -> 128
    prep = _core.prepare("p", torch.stack([dark, bright]))
    np.testing.assert_array_equal(raw(prep.items[1].image), np.full((2, 2, 3), 191))
    assert raw(to_image_message(bright))[0, 0, 0] == 128
