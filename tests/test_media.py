"""Tests for magihuman.pipeline.media: image preprocessing, pixel conversion, audio input, MP4 output."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch

from magihuman.pipeline import media

from conftest import golden_case, write_wav

# ------------------------------------------------------------------------------------------------ helpers


def _golden_tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(golden_case("codec_wan22_vae") / "wan22.safetensors"))


def _smooth_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients, uint8 [F, H, W, 3] (codec friendly, so PSNR is meaningful)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for i in range(num_frames):
        r = 127.5 + 100 * np.sin(2 * np.pi * (xx / width + i / 49))
        g = 127.5 + 100 * np.cos(2 * np.pi * (yy / height - i / 49))
        b = 255 * (xx + yy) / (width + height)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# ------------------------------------------------------------------------------------------------ image


def test_center_crop_box_golden_and_example():
    # golden: 101x80 -> 96:64 aspect -> (0, 6.5, 101, 73.5), PIL rounds half-to-even -> 101x68
    assert media.center_crop_box(101, 80, 96, 64) == (0.0, 6.5, 101.0, 73.5)
    # official example 1280x720 -> 448x256: crop 1260x720 at x 10..1270 (architecture.md §9.1)
    assert media.center_crop_box(1280, 720, 448, 256) == (10.0, 0.0, 1270.0, 720.0)
    # taller-than-target image keeps the full width
    assert media.center_crop_box(100, 300, 64, 64) == (0.0, 100.0, 100.0, 200.0)
    with pytest.raises(ValueError, match="positive integer"):
        media.center_crop_box(0, 10, 10, 10)


def test_example_image_crop(examples_dir):
    img = media.load_image(examples_dir / "image.png")
    assert img.mode == "RGB" and img.size == (1280, 720)
    box = media.center_crop_box(*img.size, 448, 256)
    assert img.crop(box).size == (1260, 720)
    x = media.preprocess_image(img, 448, 256)
    assert x.shape == (1, 3, 256, 448) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_preprocess_image_matches_golden():
    case = golden_case("codec_wan22_vae")
    golden = _golden_tensors()["encode.preprocessed_image"]
    img = media.load_image(case / "input_image.png")
    assert img.size == (101, 80)
    assert img.crop(media.center_crop_box(101, 80, 96, 64)).size == (101, 68)
    x = media.preprocess_image(case / "input_image.png", width=96, height=64)
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    assert float((x - golden).abs().max()) == 0.0  # bit-exact
    assert torch.equal(x, golden)


def test_preprocess_image_skips_crop_at_target_size():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    x = media.preprocess_image(PIL.Image.fromarray(arr), 48, 32)
    # same size: Lanczos resize is the identity, so only the scaling remains
    expected = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_preprocess_image_rejects_non_multiple_of_16():
    img = PIL.Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        media.preprocess_image(img, 100, 64)


def _orientation_exif(value: int) -> PIL.Image.Exif:
    exif = PIL.Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif


def test_load_image_applies_exif_orientation(tmp_path):
    # stored 40 wide x 20 high: left half red, right half blue; orientation 6 = display rotated 90 deg CW
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    png = tmp_path / "rot.png"
    PIL.Image.fromarray(stored).save(png, exif=_orientation_exif(6))
    img = media.load_image(png)
    assert img.mode == "RGB" and img.size == (20, 40)  # upright: 20 wide x 40 high
    up = np.asarray(img)
    # rotating 90 deg clockwise moves the stored left (red) half to the top
    assert (up[:20] == (255, 0, 0)).all() and (up[20:] == (0, 0, 255)).all()

    jpg = tmp_path / "rot.jpg"
    PIL.Image.fromarray(stored).save(jpg, exif=_orientation_exif(6), quality=95)
    img = media.load_image(jpg)
    assert img.size == (20, 40)
    assert np.asarray(img)[5, 10, 0] > 200 and np.asarray(img)[35, 10, 2] > 200

    # a PIL image given directly is transposed too
    with PIL.Image.open(png) as opened:
        assert media.load_image(opened).size == (20, 40)


def test_load_image_converts_modes_to_rgb(tmp_path):
    rgba = PIL.Image.new("RGBA", (8, 6), (10, 20, 30, 0))
    out = media.load_image(rgba)
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == [10, 20, 30]  # alpha dropped
    gray = tmp_path / "gray.png"
    PIL.Image.new("L", (8, 6), 77).save(gray)
    out = media.load_image(gray)
    assert out.mode == "RGB" and np.asarray(out)[3, 3].tolist() == [77, 77, 77]


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        media.load_image(tmp_path / "missing.png")
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        media.load_image(bad)
    with pytest.raises(ValueError, match="download"):
        media.load_image("https://example.com/a.png")
    with pytest.raises(ValueError, match="folder"):
        media.load_image(tmp_path)


# ------------------------------------------------------------------------------------------------ pixels


def test_video_to_uint8_matches_golden():
    t = _golden_tensors()
    out = media.video_to_uint8(t["decode.video"])
    expected = t["decode.frames_uint8"].numpy()
    assert out.dtype == np.uint8 and out.shape == (5, 64, 64, 3)
    assert np.array_equal(out, expected)


def test_video_to_uint8_truncates_and_clamps():
    # values -> x*0.5+0.5 -> *255: 0.999*255 = 254.7 truncates to 254; out-of-range values clamp
    vals = torch.tensor([-2.0, -1.0, 0.0, 0.998, 1.0, 3.0])
    video = vals.view(1, 1, 1, 1, 6).expand(1, 3, 1, 1, 6).contiguous()
    out = media.video_to_uint8(video)
    assert out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        media.video_to_uint8(torch.zeros(3, 2, 4, 4))


# ------------------------------------------------------------------------------------------------ output


def test_write_mp4_roundtrip(tmp_path):
    frames = _smooth_frames(49, 64, 96)
    sr = 44100
    n = int(round(2.04 * sr))
    t = np.arange(n) / sr
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    out = media.write_mp4(tmp_path / "clip.mp4", frames, fps=25, audio=audio, sample_rate=sr)
    assert out == tmp_path / "clip.mp4" and out.is_file()
    info = media.probe_media(out)
    assert info["num_video_streams"] == 1 and info["num_audio_streams"] == 1
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (96, 64)
    assert info["fps"] == 25.0 and info["num_frames"] == 49
    assert info["audio_codec"] == "aac" and info["sample_rate"] == 44100 and info["channels"] == 2
    assert abs(info["audio_duration"] - 2.04) < 0.05
    assert abs(info["audio_header_duration"] - 2.04) < 1e-3
    assert _leftovers(tmp_path) == []

    with av.open(str(out)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    mse = np.mean((first.astype(np.float64) - frames[0]) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30.0


def test_write_mp4_mono_iterator_and_odd_size(tmp_path):
    frames = _smooth_frames(5, 63, 95)  # odd sizes -> padded to 96x64
    audio = (0.1 * np.sin(np.linspace(0, 200, 8000))).astype(np.float32)  # 1-D = mono
    out = media.write_mp4(
        tmp_path / "odd.mp4", (f for f in frames), num_frames=5, audio=audio, sample_rate=16000
    )
    info = media.probe_media(out)
    assert (info["width"], info["height"], info["num_frames"]) == (96, 64, 5)
    assert info["channels"] == 1 and info["sample_rate"] == 16000
    with av.open(str(out)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    # the padded column/row replicates the edge
    assert np.abs(first[:63, 95].astype(int) - first[:63, 94].astype(int)).max() <= 8


def test_write_mp4_overwrite_and_atomicity(tmp_path):
    frames = _smooth_frames(3, 32, 32)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        media.write_mp4(target, frames)
    assert target.read_bytes() == b"precious"

    # failures before encoding: nothing written, no temp file
    with pytest.raises(ValueError, match="uint8"):
        media.write_mp4(tmp_path / "a.mp4", frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        media.write_mp4(tmp_path / "b.mp4", frames[..., :2].copy())
    with pytest.raises(ValueError, match="audio.T"):
        media.write_mp4(tmp_path / "c.mp4", frames, audio=np.zeros((1000, 2), np.float32))
    with pytest.raises(ValueError, match="AAC cannot encode"):
        media.write_mp4(tmp_path / "d.mp4", frames, audio=np.zeros((2, 1000), np.float32), sample_rate=51200)
    # failure during encoding (third streamed frame has another size): temp removed, target untouched
    bad = [frames[0], frames[1], np.zeros((16, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="same size|share one size"):
        media.write_mp4(target, iter(bad), overwrite=True)
    assert target.read_bytes() == b"precious"
    with pytest.raises(ValueError, match="num_frames"):
        media.write_mp4(tmp_path / "e.mp4", iter(frames), num_frames=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]

    media.write_mp4(target, frames, overwrite=True)
    assert media.probe_media(target)["num_frames"] == 3
    assert _leftovers(tmp_path) == []


def test_check_output_path(tmp_path):
    assert media.check_output_path(tmp_path / "ok.mp4") == tmp_path / "ok.mp4"
    assert media.check_output_path(tmp_path / "OK.MP4").name == "OK.MP4"
    with pytest.raises(ValueError, match=r"\.mp4"):
        media.check_output_path(tmp_path / "out.avi")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        media.check_output_path(tmp_path / "no" / "such" / "out.mp4")
    with pytest.raises(ValueError, match="folder"):
        (tmp_path / "dir.mp4").mkdir()
        media.check_output_path(tmp_path / "dir.mp4")
    existing = tmp_path / "exists.mp4"
    existing.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        media.check_output_path(existing)
    assert media.check_output_path(existing, overwrite=True) == existing
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            media.check_output_path(locked / "out.mp4")


def test_probe_media_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        media.probe_media(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable"):
        media.probe_media(junk)


# ------------------------------------------------------------------------------------------------ audio in


def test_load_audio_wav_resample_downmix_truncate(tmp_path):
    sr = 44100
    seconds = 1.5
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "tone.wav"
    write_wav(path, np.round(np.stack([tone, tone], axis=1) * 32767).astype(np.int16), sr)

    x = media.load_audio(path)  # 51200 Hz mono
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.shape[0] - seconds * 51200) <= 4
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    peak_hz = np.argmax(spectrum) * 51200 / x.shape[0]
    assert abs(peak_hz - 440) < 1.0
    # downmix is (L + R) / 2 like the reference's ffmpeg s16 path (not 0.707 * (L + R))
    assert abs(float(np.abs(x[2000:-2000]).max()) - 0.5) < 0.01

    y = media.load_audio(path, max_seconds=0.5)
    assert y.shape == (25600,)
    np.testing.assert_array_equal(y, x[:25600])
    z = media.load_audio(path, sample_rate=16000, max_seconds=10)
    assert abs(z.shape[0] - seconds * 16000) <= 4


def test_load_audio_from_mp4(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    out = media.write_mp4(tmp_path / "a.mp4", _smooth_frames(2, 16, 16), audio=audio, sample_rate=sr)
    x = media.load_audio(out)
    assert abs(x.shape[0] - 51200) < 2048  # AAC frame padding
    peak_hz = np.argmax(np.abs(np.fft.rfft(x))) * 51200 / x.shape[0]
    assert abs(peak_hz - 440) < 2.0


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        media.load_audio(tmp_path / "missing.wav")
    silent = media.write_mp4(tmp_path / "silent.mp4", _smooth_frames(2, 16, 16))
    with pytest.raises(ValueError, match="no audio stream"):
        media.load_audio(silent)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="not a readable"):
        media.load_audio(junk)
    with pytest.raises(ValueError, match="max_seconds"):
        media.load_audio(silent, max_seconds=0)


def test_check_image_file_decodes_and_reports_the_upright_size(tmp_path):
    path = tmp_path / "portrait.jpg"
    img = PIL.Image.new("RGB", (40, 20), (10, 200, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(path, exif=exif)
    assert media.check_image_file(path, max_pixels=10_000) == (20, 40)
    with pytest.raises(ValueError, match="40x20 pixels, more than the 100"):
        media.check_image_file(path, max_pixels=100)
    path.write_bytes(path.read_bytes()[:-200])  # cut inside the entropy-coded data
    with pytest.raises(ValueError, match="damaged"):
        media.check_image_file(path, max_pixels=10_000)


def test_check_audio_file_gives_the_duration(tmp_path):
    tone = write_wav(tmp_path / "tone.wav", (np.ones((24000, 2)) * 1000).astype(np.int16), 16000)
    assert media.check_audio_file(tone, min_seconds=0.04) == pytest.approx(1.5)
    short = write_wav(tmp_path / "short.wav", np.zeros((320, 1), np.int16), 16000)  # 0.02 s
    with pytest.raises(ValueError, match="0.020 s of sound, less than the 0.04 s"):
        media.check_audio_file(short, min_seconds=0.04)
