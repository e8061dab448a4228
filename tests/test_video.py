"""Video I/O: decord reading with row unpadding equals imageio's decode at the widths where decord pads;
atomic writes leave nothing behind on failure; conditioning images from files and videos."""
from __future__ import annotations

import numpy as np
import pytest

from vidrt.core.errors import VidrtError
from vidrt.run.video import load_image, read_video, unpad_frame, write_video


def pattern(frames: int, h: int, w: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    return [np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)),
                      np.full((h, w), i * 40 % 256)], -1).astype(np.uint8) for i in range(frames)]


@pytest.mark.parametrize("width", [16, 32, 48, 96, 40])
def test_decord_read_equals_imageio_decode(tmp_path, width):
    import imageio

    h = 24
    path = tmp_path / "v.mp4"
    assert write_video(path, pattern(4, h, width), fps=8, size=(h, width)) == 4
    ours = read_video(path)
    reader = imageio.v2.get_reader(str(path), format="FFMPEG")
    reference = np.stack([frame for frame in reader.iter_data()])  # list() trips on len() == inf
    reader.close()
    assert ours.shape == (4, h, width, 3)
    assert np.array_equal(ours, reference)
    # lossy H.264 with 4:2:0 chroma on a steep colour ramp: a few levels of error on average
    assert np.abs(ours.astype(int) - np.stack(pattern(4, h, width)).astype(int)).mean() < 8


def test_unpad_frame_drops_row_padding():
    h, w = 3, 4
    real = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    padded = np.zeros((h, w * 3 + 4), np.uint8)  # rows of 12 bytes + 4 padding bytes
    padded[:, : w * 3] = real.reshape(h, -1)
    as_decord = padded.reshape(h, w, 4)  # decord reports (H, W, 4) "channels"
    assert np.array_equal(unpad_frame(as_decord), real)
    assert unpad_frame(real) is real


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "x.mp4"

    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        write_video(path, frames(), fps=8, size=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_wrong_frame_shape_is_refused_without_output(tmp_path):
    with pytest.raises(ValueError, match="frame shape"):
        write_video(tmp_path / "x.mp4", [np.zeros((8, 8, 3), np.uint8)], fps=8, size=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_conditioning_image_from_png_and_video(tmp_path):
    from PIL import Image

    frames = pattern(3, 32, 32)
    Image.fromarray(frames[0]).save(tmp_path / "a.png")
    write_video(tmp_path / "v.mp4", frames, fps=8, size=(32, 32))
    png = np.asarray(load_image(tmp_path / "a.png"))
    first = np.asarray(load_image(tmp_path / "v.mp4"))
    assert np.array_equal(png, frames[0])
    assert first.shape == (32, 32, 3) and np.abs(first.astype(int) - frames[0].astype(int)).mean() < 4
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(VidrtError, match="cannot read image"):
        load_image(tmp_path / "bad.jpg")


def test_output_checks_before_any_model_loads(tmp_path):
    """A folder where the video, its sidecar or its checkpoint file would go is refused up front; so is an
    unfinished render's checkpoint unless resuming (it is never replaced silently)."""
    from vidrt.run.video import check_writable

    (tmp_path / "a.mp4").mkdir()
    with pytest.raises(VidrtError, match="a.mp4 is a folder"):
        check_writable(tmp_path / "a.mp4")
    (tmp_path / "b.json").mkdir()
    with pytest.raises(VidrtError, match="sidecar .*b.json"):
        check_writable(tmp_path / "b.mp4")
    (tmp_path / "c.ckpt").write_text("a file")
    with pytest.raises(VidrtError, match="c.ckpt is a file"):
        check_writable(tmp_path / "c.mp4")
    (tmp_path / "d.ckpt").mkdir()
    with pytest.raises(VidrtError, match="d.ckpt holds the checkpoint of an unfinished render.*--resume"):
        check_writable(tmp_path / "d.mp4", checkpoints=True)
    assert check_writable(tmp_path / "d.mp4", checkpoints=True, resume=True) == tmp_path / "d.mp4"
    assert check_writable(tmp_path / "d.mp4") == tmp_path / "d.mp4"   # a render that keeps no checkpoints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.json", "c.ckpt", "d.ckpt"]
