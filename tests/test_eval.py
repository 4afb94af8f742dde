"""The evaluation kit: each metric on inputs with a known answer, the reports, and `magihuman eval`."""

from __future__ import annotations

import base64
import json
import re
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from magihuman.eval.asr import to_mono_rate
from magihuman.eval.clips import ClipMedia, read_clip
from magihuman.eval.fidelity import first_frame_fidelity, psnr, ssim
from magihuman.eval.performance import MemorySampler
from magihuman.eval.prompt_set import REAL_PROMPTS, PromptEntry, dialogue_lines, read_prompt_set
from magihuman.eval.runner import compare_reports, load_report, run_prompt_set, write_report
from magihuman.eval.scoring import aggregate, score_clip
from magihuman.eval.sync import frame_loudness, measure_sync
from magihuman.eval.text import error_rate, language_code, normalise_text, space_cjk
from magihuman.eval.toy_speech import analyse_toy_speech
from magihuman.eval.toy_vision import part_colours, toy_mouth_opening
from magihuman.pipeline.errors import InputError
from magihuman.toy.attributes import ToyAttributes
from magihuman.toy.captions import make_caption
from magihuman.toy.clip import make_clip
from magihuman.toy.dataset import write_dataset

from conftest import EXAMPLES

SR = 44100


def media_of(clip, frames=None) -> ClipMedia:
    return ClipMedia(clip.frames if frames is None else frames, clip.audio[0], clip.fps, clip.sample_rate)


def toy_entry(clip, ident="c", caption=None) -> PromptEntry:
    return PromptEntry(ident, caption or clip.caption, toy=clip.attributes.to_dict(),
                       dialogue=(clip.attributes.dialogue,), language="en")


# ------------------------------------------------------------------------------------------- text


def test_word_error_rate_on_fixed_strings():
    result = error_rate("The cat sat on the mat.", "the cat sit on mat", language="English")
    assert result.unit == "word" and (result.substitutions, result.deletions, result.insertions) == (1, 1, 0)
    assert result.rate == pytest.approx(2 / 6)
    assert error_rate("Hello, world!", "hello world", language="en").rate == 0.0
    assert error_rate("one two", "", language="en").rate == 1.0


def test_character_error_rate_for_cjk():
    zh = error_rate("你 好 ， 世 界 。", "你好世间", language="Chinese")
    assert zh.unit == "character" and zh.rate == pytest.approx(1 / 4) and zh.reference == "你好世界"
    ja = error_rate("こ ん に ち は", "こんにちわ", language="ja")
    assert ja.rate == pytest.approx(1 / 5)
    assert error_rate("你 好", "你好", language=None).unit == "character"  # detected from the text


def test_normaliser_and_language_codes():
    assert normalise_text("  Don't STOP -- the \"music\"... ") == "don't stop the music"
    assert [language_code(x) for x in ("Chinese", "zh-CN", "JA", None)] == ["zh", "zh", "ja", None]
    assert space_cjk("你好，世界 ok") == "你 好 ， 世 界 ok"
    with pytest.raises(ValueError, match="empty"):
        error_rate("...", "x")


def test_resampling_for_the_recogniser():
    tone = np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    out = to_mono_rate(np.stack([tone, tone]), SR, 16000)
    assert out.shape == (16000,) and out.dtype == np.float32
    peak = np.argmax(np.abs(np.fft.rfft(out)))
    assert abs(peak - 440) <= 1


# ------------------------------------------------------------------------------------ toy speech


def test_word_count_and_pitch_of_generator_clips():
    for seed in range(25):
        clip = make_clip((3, seed))
        result = analyse_toy_speech(clip.audio, SR)
        assert result.words == len(clip.attributes.words), seed
        assert result.pitch == clip.attributes.voice and abs(result.f0_hz / clip.f0 - 1) < 0.08, seed


def test_word_count_and_pitch_of_tone_bursts():
    t = np.arange(int(0.2 * SR)) / SR
    burst = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * np.hanning(t.size)  # harmonic-rich 150 Hz
    gap = np.zeros(int(0.1 * SR))
    result = analyse_toy_speech(np.concatenate([gap, burst, gap, burst, gap, burst, gap]), SR)
    assert result.words == 3 and result.f0_hz == pytest.approx(150, rel=0.03) and result.pitch == "low"
    assert analyse_toy_speech(np.zeros(SR), SR).words == 0


# ------------------------------------------------------------------------------------------ sync


def shifted(frames: np.ndarray, lag: int) -> np.ndarray:
    """Video whose frame t shows source frame t - lag (positive lag: the picture is late)."""
    index = np.clip(np.arange(len(frames)) - lag, 0, len(frames) - 1)
    return frames[index]


@pytest.mark.parametrize("lag", [-4, -1, 0, 2, 5])
def test_sync_recovers_a_known_lag(lag):
    clip = make_clip((4, lag + 10), attributes=ToyAttributes("woman", "red", "blue", "yellow", "light", "high",
                                                              ("one", "two", "three", "four", "five")))
    mouth = toy_mouth_opening(shifted(clip.frames, lag))
    result = measure_sync(mouth, frame_loudness(clip.audio, len(clip.frames)))
    assert abs(result.offset_frames - lag) <= 1
    assert result.offset_ms == pytest.approx(result.offset_frames * 40.0)
    assert result.correlation > 0.8 and result.confidence > 0.3


def test_sync_without_movement_is_undefined():
    result = measure_sync(np.ones(49), np.random.default_rng(0).random(49))
    assert np.isnan(result.offset_frames) and np.isnan(result.correlation)
    with pytest.raises(ValueError, match="8 frames"):
        measure_sync(np.ones(5), np.ones(5))


# ---------------------------------------------------------------------------------------- colours


def test_colour_adherence_on_own_clips_and_a_wrong_caption():
    clips = [make_clip((5, i)) for i in range(12)]
    scores = [score_clip(media_of(c), toy_entry(c, str(i))) for i, c in enumerate(clips)]
    assert aggregate(scores)["colour_accuracy_pct"] == 100.0
    a = clips[0].attributes
    others = {"hair": "pink" if a.hair != "pink" else "blue", "shirt": "purple" if a.shirt != "purple" else "red",
              "wall": "teal" if a.wall != "teal" else "yellow"}
    wrong = ToyAttributes(a.gender, others["hair"], others["shirt"], others["wall"], a.skin, a.voice, a.words)
    caption = make_caption(wrong, np.random.default_rng(0))
    score = score_clip(media_of(clips[0]), toy_entry(clips[0], caption=caption))
    assert score["toy"]["colour_accuracy"] == 0.0
    assert {p: c.name for p, c in part_colours(clips[0].frames).items()} == {
        "hair": a.hair, "shirt": a.shirt, "wall": a.wall}


def test_toy_figures_split_by_skin_tone_show_a_face_lost_on_one_tone():
    """Clips of each skin tone; the dark ones have their mouth painted over with the skin, as the first toy
    codecs drew them: the split says so while the totals only shrink."""
    import dataclasses

    from magihuman.toy.drawing import MOUTH_REGION
    from magihuman.toy.palette import SKIN_TONES

    scores = []
    for i, skin in enumerate(["light", "tan", "dark"] * 2):
        clip = make_clip((5, 40 + i), variant="t2v")
        clip = make_clip((5, 40 + i), variant="t2v", attributes=dataclasses.replace(clip.attributes, skin=skin))
        frames = clip.frames.copy()
        if skin == "dark":
            x0, y0, x1, y1 = MOUTH_REGION
            frames[:, y0:y1, x0:x1] = SKIN_TONES["dark"]
        scores.append(score_clip(media_of(clip, frames), toy_entry(clip, str(i))))
    assert {s["toy"]["skin_expected"] for s in scores} == {"light", "tan", "dark"}
    split = aggregate(scores)["toy_by_skin"]
    assert sorted(split) == ["dark", "light", "tan"]
    assert [split[k]["clips"] for k in ("dark", "light", "tan")] == [2, 2, 2]
    assert split["light"]["sync_clips"] == split["tan"]["sync_clips"] == 2
    assert split["dark"]["sync_clips"] == 0 and split["dark"]["mouth_open_while_speaking_pct"] == 0.0
    assert split["light"]["mouth_open_while_speaking_pct"] > 50
    assert split["dark"]["colour_accuracy_pct"] == split["light"]["colour_accuracy_pct"] == 100.0
    assert aggregate(scores)["sync_clips"] == 4


# ---------------------------------------------------------------------------------------- fidelity


def test_psnr_and_ssim_known_values():
    rng = np.random.default_rng(0)
    image = rng.integers(20, 230, size=(64, 48, 3)).astype(np.uint8)
    assert psnr(image, image) == float("inf") and ssim(image, image) == pytest.approx(1.0)
    assert psnr(image, image + 10) == pytest.approx(10 * np.log10(255 ** 2 / 100))
    flat_a, flat_b = np.full((32, 32), 100, np.uint8), np.full((32, 32), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1))
    noise = rng.integers(0, 256, size=image.shape).astype(np.uint8)
    assert ssim(image, noise) < 0.1
    with pytest.raises(ValueError, match="shape"):
        psnr(image, image[:10])


def test_first_frame_fidelity_resizes_the_given_image():
    frame = make_clip(2).frames[0]
    from PIL import Image

    big = np.asarray(Image.fromarray(frame).resize((256, 256), Image.NEAREST))
    result = first_frame_fidelity(big, frame)
    assert result["psnr_db"] > 25 and result["ssim"] > 0.9
    assert first_frame_fidelity(big, make_clip(9).frames[0])["psnr_db"] < 20


# ------------------------------------------------------------------------------------- prompt sets


def write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_prompt_set_reader(tmp_path):
    prompt = ('Body.\n\nDialogue:\n<Woman in red, Chinese>: "你 好"\n\n'
              "Background Sound:\n<No prominent background sound>")
    entries = read_prompt_set(write_lines(tmp_path / "p.jsonl", [{"prompt": prompt}, {"prompt": "x", "id": "b"}]))
    assert [e.id for e in entries] == ["001", "b"]
    assert entries[0].dialogue == ("你 好",) and entries[0].language == "Chinese"
    assert dialogue_lines("no dialogue") == ([], None)
    bad = {"not valid JSON": ["{"], "non-empty \"prompt\"": [{"id": "a"}],
           "duplicate id": [{"prompt": "x", "id": "a"}] * 2,
           "image file not found": [{"prompt": "x", "image": "missing.png"}], "seed": [{"prompt": "x", "seed": -1}]}
    for message, rows in bad.items():
        with pytest.raises(InputError, match=message):
            read_prompt_set(write_lines(tmp_path / "bad.jsonl", rows))


def test_real_prompt_set():
    entries = read_prompt_set(REAL_PROMPTS)
    assert len(entries) == 20 and len({e.id for e in entries}) == 20
    languages = {language_code(e.language) for e in entries}
    assert {"en", "zh", "ja"} <= languages and len(languages) >= 6
    cjk = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]{2}")
    for e in entries:
        body, dialogue, background = e.prompt.split("\n\n")
        assert dialogue.startswith("Dialogue:\n<") and background.startswith("Background Sound:\n<")
        assert e.dialogue and all(f'"{line}"' in body for line in e.dialogue)  # quoted inline too
        assert not cjk.search(e.prompt), e.id  # a space between every two CJK characters
        words = len(re.sub(r'"[^"]*"', "", body).split())
        assert 120 <= words <= 200, (e.id, words)


# ------------------------------------------------------------------------------------ performance


def test_memory_peaks_are_attributed_to_stages():
    import time

    with MemorySampler(interval_s=0.002) as sampler:
        time.sleep(0.15)
        start = time.perf_counter()
        block = np.ones(25_000_000, dtype=np.float64)  # 200 MB
        time.sleep(0.15)
        del block
        big_stage = time.perf_counter() - start
        time.sleep(0.15)
    timings = {"small": sampler.end - sampler.start - big_stage - 0.15, "big": big_stage, "after": 0.15}
    perf = sampler.performance(timings)
    peaks = perf.stage_peak_rss_bytes
    assert peaks["big"] - max(peaks["small"], peaks["after"]) > 150e6
    assert perf.peak_rss_bytes >= peaks["big"] and perf.wall_s >= 0.45


# ----------------------------------------------------------------------------- reports and commands


def test_report_and_comparison_are_written(tmp_path):
    clips = [make_clip((6, i)) for i in range(3)]
    perf = {"wall_s": 1.0, "stage_s": {"denoise": 0.7, "video decode": 0.3}, "peak_rss_bytes": 1 << 30}
    scores = [score_clip(media_of(c), toy_entry(c, f"c{i}"), performance=perf) for i, c in enumerate(clips)]
    (tmp_path / "a").mkdir()
    report = write_report(tmp_path / "a", scores, {"command": "test"})
    on_disk = json.loads((tmp_path / "a" / "report.json").read_text())
    assert on_disk["aggregate"] == report["aggregate"]
    assert on_disk["aggregate"]["mean_stage_s"]["denoise"] == pytest.approx(0.7)
    pages = (tmp_path / "a" / "report.html").read_text()
    figures = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', pages)
    assert len(figures) == 3 and all(base64.b64decode(f).startswith(b"\x89PNG") for f in figures)
    worse = [dict(s, sync=dict(s["sync"], correlation=0.5)) for s in scores]
    (tmp_path / "b").mkdir()
    write_report(tmp_path / "b", worse, {"command": "test"})
    (tmp_path / "cmp").mkdir()
    comparison = compare_reports(load_report(tmp_path / "a"), load_report(tmp_path / "b"), tmp_path / "cmp")
    assert comparison["metrics"]["sync_median_correlation"]["b"] == 0.5
    assert comparison["metrics"]["sync_median_correlation"]["b_minus_a"] < -0.4
    assert len(re.findall(r"data:image/png;base64", (tmp_path / "cmp" / "report.html").read_text())) == 2


def test_eval_score_on_generator_mp4s(tmp_path):
    from magihuman.cli.app import app

    write_dataset(tmp_path / "ds", clips=1, seed=8, held_out=4)
    args = ["eval", "score", "--clips", str(tmp_path / "ds" / "held_out"), "--prompts",
            str(tmp_path / "ds" / "held_out.jsonl"), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "r" / "report.json").read_text())["aggregate"]
    assert figures["colour_accuracy_pct"] == figures["pitch_accuracy_pct"] == figures["word_count_exact_pct"] == 100
    assert figures["sync_median_abs_offset_frames"] == 0 and figures["sync_median_correlation"] > 0.95
    if figures["first_frame_clips"]:
        assert figures["first_frame_median_psnr_db"] > 30
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already holds a report" in again.output


def test_eval_run_through_a_pipeline(tmp_path):
    from magihuman.pipeline.media import write_mp4

    clips = {i: make_clip((9, i)) for i in range(2)}

    class Output:  # what the runner uses of a GenerationOutput
        def __init__(self, clip):
            self.clip, self.timings = clip, {"denoise": 0.01, "video decode": 0.01}

        def save(self, path, overwrite=False):
            return write_mp4(path, self.clip.frames, audio=self.clip.audio, overwrite=overwrite)

    def pipe(prompt, image=None, audio=None, seed=0, **settings):
        return Output(clips[seed])

    entries = [toy_entry(c, f"t{i}") for i, c in clips.items()]
    entries = [PromptEntry(e.id, e.prompt, seed=i, toy=e.toy) for i, e in enumerate(entries)]
    scores = run_prompt_set(entries, pipe, tmp_path, log=lambda _: None)
    assert [s["video"] for s in scores] == ["clips/t0.mp4", "clips/t1.mp4"]
    assert read_clip(tmp_path / "clips" / "t1.mp4").frames.shape == clips[1].frames.shape
    assert all(s["toy"]["colour_accuracy"] == 1.0 and s["sync"]["offset_frames"] == 0 for s in scores)
    assert set(scores[0]["performance"]["stage_s"]) == {"denoise", "video decode"}


def test_eval_commands_refuse_bad_input(tmp_path):
    from magihuman.cli.app import app

    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": "x"}])
    both = CliRunner().invoke(app, ["eval", "run", "--prompts", str(prompts), "--out", str(tmp_path / "o")])
    assert both.exit_code == 2 and "--checkpoint-root" in both.output
    missing = CliRunner().invoke(app, ["eval", "score", "--clips", str(tmp_path), "--prompts", str(prompts),
                                       "--out", str(tmp_path / "o"), "--no-asr", "--no-face-mesh"])
    assert missing.exit_code == 2 and "001.mp4" in missing.output


def test_non_toy_clip_gets_wer_from_the_transcriber():
    class Fixed:
        def transcribe(self, waveform, sample_rate, language=None):
            return "hello there world"

    clip = make_clip(1)
    entry = PromptEntry("r", "real prompt", dialogue=("Hello there, my world!",), language="English")
    score = score_clip(media_of(clip), entry, transcriber=Fixed())
    assert score["intelligibility"]["rate"] == pytest.approx(1 / 4) and score["toy"] is None
    assert score["sync"] is None and "eval-face" in score["notes"][0]


# ------------------------------------------------------------------------------------- face mesh


def test_face_mesh_missing_gives_install_hint(monkeypatch):
    from magihuman.eval.face_mesh import FaceMeshMouth, MissingDependencyError

    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(MissingDependencyError, match="eval-face"):
        FaceMeshMouth()


def test_face_mesh_finds_the_mouth_in_the_example_photo():
    pytest.importorskip("mediapipe", reason="optional eval-face extra (mediapipe 0.10.x) not installed")
    from PIL import Image

    from magihuman.eval.face_mesh import FaceMeshMouth

    image = np.asarray(Image.open(EXAMPLES / "image.png").convert("RGB"))
    with FaceMeshMouth() as mesh:
        face = mesh.find(image)
    assert face is not None and face.landmarks.shape == (468, 2)
    fx0, fy0, fx1, fy1 = face.face_box
    mx0, my0, mx1, my1 = face.mouth_box
    assert fx0 <= (mx0 + mx1) / 2 <= fx1 and fy0 + 0.5 * (fy1 - fy0) <= (my0 + my1) / 2 <= fy1 + 0.2 * (fy1 - fy0)
    assert 0.0 <= face.opening < 0.6


def test_eval_run_overrides_the_step_count_runs_fp32_and_refuses_a_bad_lora(tmp_path, demo_root):
    import json

    from magihuman.cli.app import app

    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": "A man says hello.", "seconds": 0.32, "width": 64,
                                                  "height": 64}])
    steps, dtypes = [], set()
    from magihuman.pipeline import stages

    original = stages.denoise_latents

    def counting(pipe, *args, **kwargs):
        from magihuman.model.layers import ExpertLinear

        steps.append(pipe.preset.sampler.num_steps)
        dtypes.update(m.weight.dtype for m in pipe.transformer.modules() if isinstance(m, ExpertLinear))
        return original(pipe, *args, **kwargs)

    stages.denoise_latents = counting
    try:
        result = CliRunner().invoke(app, ["eval", "run", "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                                          "--demo", "--preset", "base", "--steps", "3", "--no-asr",
                                          "--no-face-mesh", "--fp32"])
    finally:
        stages.denoise_latents = original
    assert result.exit_code == 0, result.output
    assert steps == [3]
    settings = json.loads((tmp_path / "o" / "report.json").read_text())["settings"]
    assert settings["steps"] == 3 and settings["fp32"] is True and dtypes == {torch.float32}
    bad = CliRunner().invoke(app, ["eval", "run", "--prompts", str(prompts), "--out", str(tmp_path / "o2"),
                                   "--demo", "--lora", str(tmp_path / "missing.safetensors"), "--no-asr"])
    assert bad.exit_code == 2 and "--lora" in bad.output


def test_eval_run_decodes_with_the_chosen_video_decoder_and_refuses_an_unknown_one(tmp_path, demo_root):
    import json

    from magihuman.cli.app import app
    from magihuman.pipeline import stages

    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": "A man says hello.", "seconds": 0.32, "width": 64,
                                                  "height": 64}])
    decoders = []
    original = stages.denoise_latents

    def watching(pipe, *args, **kwargs):
        decoders.append(pipe.video_decoder is pipe.video_vae)
        return original(pipe, *args, **kwargs)

    stages.denoise_latents = watching
    try:
        for name in ("wan", "turbo"):
            result = CliRunner().invoke(app, ["eval", "run", "--prompts", str(prompts), "--out",
                                              str(tmp_path / name), "--demo", "--no-asr", "--no-face-mesh",
                                              "--video-decoder", name])
            assert result.exit_code == 0, result.output
            assert json.loads((tmp_path / name / "report.json").read_text())["settings"]["video_decoder"] == name
    finally:
        stages.denoise_latents = original
    assert decoders == [True, False]
    bad = CliRunner().invoke(app, ["eval", "run", "--prompts", str(prompts), "--out", str(tmp_path / "bad"),
                                   "--demo", "--video-decoder", "vae", "--no-asr"])
    assert bad.exit_code == 2 and "--video-decoder 'vae'" in bad.output and "turbo" in bad.output


def test_mouth_open_while_speaking_on_known_series_and_own_clips():
    """Speaking frames are those above 30 % of the loudest; open means above 3 pixels (closed reads 2)."""
    from magihuman.eval.toy_vision import mouth_open_while_speaking

    loud = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.0, 0.5])
    mouth = np.array([9.0, 9.0, 2.0, 4.0, 3.0, 9.0, 9.0, 8.0])  # speaking frames 1-4 and 7: open at 1, 3, 7
    assert mouth_open_while_speaking(mouth, loud) == pytest.approx(3 / 5)
    assert mouth_open_while_speaking(mouth, loud, np.arange(8) < 3) == pytest.approx(1 / 2)
    assert mouth_open_while_speaking(mouth, np.zeros(8)) is None
    with pytest.raises(ValueError, match="one length"):
        mouth_open_while_speaking(mouth, loud[:7])
    clips = [make_clip((6, i)) for i in range(6)]
    scores = [score_clip(media_of(c), toy_entry(c, str(i))) for i, c in enumerate(clips)]
    shares = [s["toy"]["mouth_open_while_speaking"] for s in scores]
    assert min(shares) > 0.8  # the generator opens the mouth with its voice
    still = [score_clip(media_of(c, frames=np.repeat(c.frames[:1], len(c.frames), axis=0)), toy_entry(c, "s"))
             for c in clips[:2]]
    assert all(s["toy"]["mouth_open_while_speaking"] < 0.5 for s in still)  # a frozen first frame
    assert aggregate(scores)["mouth_open_while_speaking_pct"] == pytest.approx(100 * np.mean(shares))
