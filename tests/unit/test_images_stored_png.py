"""The image example's fast PNG decoder (imaging/stored_png.py): what files.write_png writes decodes to exactly
cv2.imread's pixels, whatever the size (one pixel, odd widths, a frame spanning many stored blocks and IDAT
chunks); every other PNG — compressed, row-filtered, grey, with alpha, damaged, truncated — is declined (None)
and files.read still returns cv2.imread's pixels, or refuses a file libpng refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "images"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from imaging import files, stored_png  # noqa: E402

RNG = np.random.default_rng(12)


def pixels(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (48, 64), (500, 741)])
def test_written_pngs_decode_to_imreads_pixels(tmp_path: Path, shape: tuple[int, int]) -> None:
    image = pixels(*shape)
    path = files.write_png(image, tmp_path / "a.png")
    fast = stored_png.decode(path.read_bytes())
    assert fast is not None, "write_png's own file took the slow path"
    assert fast.dtype == np.uint8 and fast.shape == (*shape, 3)
    assert np.array_equal(fast, cv2.imread(str(path))) and np.array_equal(fast, image)
    files._CACHE.clear()  # write_png remembered the image: make read() decode the file
    assert np.array_equal(files.read(path), image)


def encoded(image: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(".png", image, list(params))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("params", [
    (),  # OpenCV's default: compressed, adaptive row filters
    (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE),  # compressed blocks
    (cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB),  # stored, filtered rows
])
def test_other_pngs_are_declined_and_read_by_libpng(tmp_path: Path, params: tuple[int, ...]) -> None:
    # smooth, so that zlib compresses (random pixels are kept in stored blocks even at level 9) and filters pay
    image = np.broadcast_to((np.arange(40)[:, None, None] * 3 + np.arange(30)[None, :, None] * 5 +
                             np.arange(3)).astype(np.uint8), (40, 30, 3)).copy()
    path = tmp_path / "other.png"
    path.write_bytes(encoded(image, *params))
    assert stored_png.decode(path.read_bytes()) is None
    assert np.array_equal(files.read(path), image)


def test_grey_alpha_and_damaged_files_are_declined(tmp_path: Path) -> None:
    image = pixels(20, 30)
    stored = (cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE)
    assert stored_png.decode(encoded(image[:, :, 0], *stored)) is None  # grey
    assert stored_png.decode(encoded(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA), *stored)) is None  # alpha
    good = encoded(image, *stored)
    assert stored_png.decode(good) is not None
    assert stored_png.decode(good[:-20]) is None  # truncated: no IEND
    assert stored_png.decode(b"GIF89a" + good[6:]) is None
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x40  # one pixel byte inside the stored data: the Adler-32 no longer matches
    assert stored_png.decode(bytes(damaged)) is None
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(damaged))
    if cv2.imread(str(path)) is None:  # libpng refuses it too (chunk CRC): so does read(), with the path
        with pytest.raises(ValueError, match="damaged.png"):
            files.read(path)
    else:
        assert np.array_equal(files.read(path), cv2.imread(str(path)))
