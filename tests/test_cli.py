"""The ``magihuman`` command line: parsing, validation before loading, download errors, demo runs.

Most tests replace ``MagiHumanPipeline.from_official`` with a recorder, so they check what the CLI
builds without loading a model. The two ``*_demo_*`` tests run the real pipeline on the random-weight
demo bundle and read the MP4 back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import magihuman.cli.app as cli
import magihuman.cli.generate as cli_generate
import magihuman.pipeline.download as hub
import magihuman.pipeline.magihuman_pipeline as pipeline
from magihuman.cli.options import REQUEST_KEYS, GenerateOptions
from magihuman.pipeline.loading import ROOT_LAYOUT
from magihuman.pipeline.request import GenerationRequest
from magihuman.runtime.options import RuntimeOptions

from conftest import write_tone

runner = CliRunner()
PROMPT = "A woman in a red coat smiles and says hello to the camera."


# ------------------------------------------------------------------------------------------------ fixtures


class FakePipeline:
    """Stands in for ``MagiHumanPipeline``: records how it was built and what it was asked."""

    def __init__(self, calls: list, fail_load: Exception | None = None):
        self.calls, self.fail_load, self.requests = calls, fail_load, []

    def from_official(self, root=None, **kwargs):
        self.calls.append(dict(root=root, **kwargs))
        if self.fail_load is not None:
            raise self.fail_load
        return self

    def __call__(self, request, progress=False, decode=True):
        self.requests.append(request)
        frames = np.zeros((5, 64, 64, 3), np.uint8)
        audio = np.zeros((2, 8820), np.float32)
        return pipeline.GenerationOutput(frames, audio, 25, 44100, timings={"denoise": 0.5, "video decode": 0.25})


@pytest.fixture
def fake(monkeypatch):
    """A recording fake; ``fake.calls`` lists every ``from_official`` call."""
    pipe = FakePipeline([])
    monkeypatch.setattr(pipeline.MagiHumanPipeline, "from_official", pipe.from_official)
    return pipe


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A checkpoint root with the layout folders (a config file each, no weights); also the current folder is
    ``tmp_path``."""
    folder = tmp_path / "ckpt"
    for name in ("distill", "base", "540p_sr", *ROOT_LAYOUT.values()):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.CHECKPOINT_ROOT_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    import PIL.Image

    path = tmp_path / "face.png"
    PIL.Image.new("RGB", (96, 64), (200, 120, 80)).save(path)
    return path


@pytest.fixture
def tone(tmp_path) -> Path:
    """A 1 s 440 Hz mono WAV tone at 16 kHz."""
    return write_tone(tmp_path / "tone.wav", rate=16000)


def run(*args: str, env: dict | None = None):
    return runner.invoke(cli.app, [str(a) for a in args], env=env)


def assert_bad_input(result, *needles: str) -> None:
    """Exit code 2, one ``error:`` line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ entry points


def test_version_and_help():
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"magihuman {cli.__version__}"
    result = run("generate", "--help")
    assert result.exit_code == 0
    for spelling in ("--image_path", "--audio_path", "--br_width", "--br_height", "--output_path",
                     "--save_path_prefix", "--checkpoint-root", "MAGIHUMAN_CHECKPOINT_ROOT", "--demo"):
        assert spelling in result.output


def test_module_and_console_script():
    out = subprocess.run([sys.executable, "-m", "magihuman", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"magihuman {cli.__version__}"
    script = shutil.which("magihuman")
    if script is None:
        pytest.skip("console script not installed (pip install -e .)")
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"magihuman {cli.__version__}"


def test_the_entry_point_ends_through_the_fast_exit_with_handlers_run_and_output_flushed(tmp_path):
    """``main`` skips only the interpreter's module teardown (about a second with torch imported: benchmarks.md):
    non-daemon threads are waited for, atexit handlers run, output is flushed, and the exit codes are the documented
    ones (0, 2)."""
    marker, teardown, thread_file = tmp_path / "atexit-ran", tmp_path / "teardown-ran", tmp_path / "thread-ran"
    script = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "class Global:\n"
        f"    def __del__(self): pathlib.Path({str(teardown)!r}).write_text('yes')\n"
        "kept = Global()\n"
        "from magihuman.cli.app import main\n"
        "sys.argv = ['magihuman', *sys.argv[1:]]\n"
        "import threading, time\n"  # a thread that is not a daemon: a normal exit waits for it
        f"threading.Thread(target=lambda: (time.sleep(0.5), pathlib.Path({str(thread_file)!r}).write_text('yes'))"
        ").start()\n"
        "main()\n"
        "print('unreachable')\n"
    )
    out = subprocess.run([sys.executable, "-c", script, "--version"], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, f"magihuman {cli.__version__}\n")  # flushed, nothing after main()
    assert marker.read_text() == "yes"
    assert not teardown.exists()  # the module teardown (which would collect `kept`) was skipped
    assert thread_file.read_text() == "yes"  # ... but not the wait for the non-daemon thread
    marker.unlink()
    env = {k: v for k, v in os.environ.items() if k != cli.CHECKPOINT_ROOT_ENV}
    out = subprocess.run([sys.executable, "-c", script, "generate", "--prompt", "x"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 2 and out.stderr.count("error:") == 1 and "no checkpoint root" in out.stderr, out.stderr
    assert marker.read_text() == "yes" and "unreachable" not in out.stdout


def test_help_shows_flags_without_placeholders_and_states_the_limits():
    result = run("generate", "--help", env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output  # --demo, --overwrite, --fp8 ... are switches, shown alone
    text = " ".join(result.output.split())
    for limit in ("at most 20,000 characters", "up to 10", "32..896", "32..1920", "0..2**63-1", "at least 0.04 s"):
        assert limit in text, limit
    for name in ("distill|base|sr_540p|sr_1080p", "turbo|wan", "auto|sdpa|flex|fa3", "[components|blocks]"):
        assert name in result.output  # the library's own tables, not copies


def test_cli_keys_match_the_library():
    from magihuman.pipeline.presets import PRESETS

    # every request field has an option of its name, but prompt_schedule, which --prompt-at SECONDS=TEXT fills
    assert set(REQUEST_KEYS) | {"prompt_schedule"} == set(GenerationRequest.model_fields)
    assert "prompt_at" in {f.name for f in GenerateOptions.flag_fields()}
    assert {p.checkpoint for p in PRESETS.values()} <= set(hub.DIT_PRESETS)
    assert set(ROOT_LAYOUT.values()) <= {s.folder for s in hub.SOURCES}


# ------------------------------------------------------------------------------------------------ parsing


def test_reference_spellings(fake, root, image, tone, tmp_path):
    out = tmp_path / "clip.mp4"
    result = run("generate", "--prompt", PROMPT, "--image_path", image, "--audio_path", tone, "--br_width", 480,
                 "--br_height", 272, "--output_path", out, "--seed", 0, "--seconds", 2, "--checkpoint-root", root,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    (request,) = fake.requests
    assert (request.image, request.audio, request.width, request.height) == (image, tone, 480, 272)
    assert (request.seed, request.seconds, request.preset, request.negative_prompt) == (0, 2.0, "distill", None)
    assert "rounded down to 480x256" in result.output  # the request's notice is shown
    assert fake.calls == [dict(root=root, transformer=None, text_encoder=None, video_vae=None, audio_vae=None,
                               sr_transformer=None, turbo_vae=None, preset="distill", video_decoder="turbo",
                               device="cpu", progress=True, runtime=RuntimeOptions())]
    assert out.is_file() and f"wrote {out}" in result.output
    for stage in ("load models", "denoise", "video decode", "write mp4", "total"):
        assert stage in result.output


def test_save_path_prefix_gets_mp4(fake, root):
    result = run("generate", "--prompt", PROMPT, "--save_path_prefix", "outputs_x", "--checkpoint-root", root)
    assert result.exit_code == 0, result.output
    assert Path("outputs_x.mp4").is_file()


def test_prompt_file_is_read_verbatim(fake, root, tmp_path):
    text = '"She says: ""Guten Tag!""\r\n\nDialogue:\n<Woman>: ""Hi.""\n"\n'
    (tmp_path / "prompt.txt").write_bytes(text.encode("utf-8") + b"\n")  # two trailing newlines
    (tmp_path / "negative.txt").write_bytes(b"blurry, noisy\r\n")
    result = run("generate", "--prompt-file", tmp_path / "prompt.txt", "--negative-prompt-file",
                 tmp_path / "negative.txt", "--preset", "base", "--checkpoint-root", root, "-o", "a.mp4")
    assert result.exit_code == 0, result.output
    (request,) = fake.requests
    assert request.prompt == text.rstrip("\n")  # inner quotes, CR and blank lines kept; trailing newlines dropped
    assert request.negative_prompt == "blurry, noisy"
    assert request.preset == "base" and fake.calls[0]["preset"] == "base"


def test_example_prompt_file_round_trip(examples_dir):
    path = examples_dir / "prompt.txt"
    text = cli.read_text_file(path)
    assert text == path.read_bytes().decode("utf-8").removesuffix("\n")
    assert text.startswith('"') and '""' in text


def test_config_merge_and_override(fake, root, image, tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "prompt": PROMPT, "seconds": 2, "width": 320, "seed": 7, "image": str(image), "output": "from_config.mp4",
        "checkpoint_root": str(root), "device": "cpu", "preset": "base",
    }))
    result = run("generate", "--config", config, "--seed", 9, "--preset", "distill")
    assert result.exit_code == 0, result.output
    (request,) = fake.requests
    assert (request.seconds, request.width, request.height, request.seed, request.image) == (2, 320, 256, 9, image)
    assert request.preset == "distill" and request.prompt == PROMPT
    assert Path("from_config.mp4").is_file()
    # A prompt on the command line replaces the file's prompt *or* prompt_file.
    config.write_text(json.dumps({"prompt_file": "missing.txt", "checkpoint_root": str(root)}))
    result = run("generate", "--config", config, "--prompt", "Override.", "-o", "b.mp4")
    assert result.exit_code == 0, result.output
    assert fake.requests[-1].prompt == "Override."


def test_config_errors(fake, root, tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"prompt": PROMPT, "num_steps": 4, "sr_width": 896}))
    assert_bad_input(run("generate", "--config", config), "num_steps", "sr_width", "allowed keys")
    config.write_text("{not json")
    assert_bad_input(run("generate", "--config", config), "not valid JSON")
    config.write_text(json.dumps({"prompt": PROMPT, "seconds": "two", "checkpoint_root": str(root)}))
    assert_bad_input(run("generate", "--config", config), "seconds")
    config.write_text(json.dumps({"prompt": PROMPT, "image": 3}))
    assert_bad_input(run("generate", "--config", config), "image must be a string")
    assert_bad_input(run("generate", "--config", tmp_path / "nope.json"), "config file not found")
    assert fake.calls == []


def test_default_output_name():
    """Letters of every script are kept; separators, dots and punctuation are not."""
    assert cli.default_output_name('"A young woman, smiling', 2.0, 448, 256) == "A_young_woman_smiling_2s_448x256.mp4"
    assert cli.default_output_name("Ein Mädchen sagt: ../../etc/passwd $(rm -rf)", 4, 480, 256) == (
        "Ein_Mädchen_sagt_etcpasswd_rm_-rf_4s_480x256.mp4"
    )
    assert cli.default_output_name("你好 !!!", 2.5, 448, 256) == "你好_2.5s_448x256.mp4"
    assert cli.default_output_name("!!! ...", 1, 64, 32) == "magihuman_1s_64x32.mp4"
    decomposed = "Mädchen".replace("ä", "a\u0308")  # NFD input gives the NFC name
    assert cli.default_output_name(decomposed, 1, 64, 32) == "Mädchen_1s_64x32.mp4"
    name = cli.default_output_name("word " * 40, 1, 64, 32)
    assert name == "word_word_word_word_word_word_1s_64x32.mp4"


def test_default_output_in_current_folder_uses_rendered_size(fake, root):
    result = run("generate", "--prompt", '"Hello, world!" she says.', "--width", 450, "--seconds", 1,
                 "--checkpoint-root", root)
    assert result.exit_code == 0, result.output
    assert Path("Hello_world_she_says_1s_448x256.mp4").is_file()


def test_env_root_config_root_and_demo(fake, root, monkeypatch, tmp_path):
    monkeypatch.setenv(cli.CHECKPOINT_ROOT_ENV, str(root))
    assert run("generate", "--prompt", PROMPT, "-o", "env.mp4").exit_code == 0
    assert fake.calls[-1]["root"] == root
    other = tmp_path / "other"
    shutil.copytree(root, other)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"checkpoint_root": str(other)}))
    assert run("generate", "--prompt", PROMPT, "-o", "cfg.mp4", "--config", config).exit_code == 0
    assert fake.calls[-1]["root"] == other  # the config file beats the environment
    # --demo replaces an environment root silently (no model is built here: the bundle is faked).
    import magihuman.demo.bundle

    monkeypatch.setattr(magihuman.demo.bundle, "ensure_demo_bundle", lambda root=None: tmp_path / "demo")
    result = run("generate", "--demo", "--prompt", PROMPT, "-o", "demo.mp4")
    assert result.exit_code == 0, result.output
    assert fake.calls[-1]["root"] == tmp_path / "demo"
    assert "RANDOM weights" in result.output and "magihuman download" in result.output


def test_demo_warns_when_a_toy_caption_asks_for_dark_skin(fake, monkeypatch, tmp_path):
    """The shipped toy codecs draw no mouth on dark skin (docs/toy_world.md): --demo says so for such a caption,
    and only for the trained toy bundle and only for that skin tone; likewise for a caption without the toy's
    Dialogue and Background Sound parts (no model is built: the pipeline is faked). The real model's notice for
    prompts under 50 words is left out for the toy models, whose captions are short by design."""
    import magihuman.demo.bundle

    monkeypatch.chdir(tmp_path)  # the fake pipeline writes its outputs into the current folder
    monkeypatch.setattr(magihuman.demo.bundle, "demo_checkpoint_root", lambda: (tmp_path / "toy", True))
    monkeypatch.setattr(magihuman.demo.bundle, "demo_is_trained", lambda: True)
    caption = ("A cartoon man with red hair and {} skin, wearing a black shirt, in front of a plain pink wall says "
               "\"hi two\" in a high voice.")
    result = run("generate", "--demo", "--prompt", caption.format("dark"), "-o", "dark.mp4")
    assert result.exit_code == 0, result.output
    assert "toy world's small models" in result.output and "no eyes and no mouth on dark skin" in result.output
    result = run("generate", "--demo", "--prompt", caption.format("tan"), "-o", "tan.mp4")
    assert result.exit_code == 0 and "toy world's small models" in result.output
    assert "on dark skin" not in result.output
    assert "lacks the toy captions' `Dialogue:` and `Background Sound:` parts" in " ".join(result.output.split())
    full = caption.format("tan") + ("\n\nDialogue:\n<Man in black shirt, English>: \"hi two\"\n\nBackground Sound:\n"
                                    "<No prominent background sound>")
    result = run("generate", "--demo", "--prompt", full, "-o", "full.mp4")
    assert result.exit_code == 0 and "toy world's small models" in result.output and "lacks" not in result.output
    assert "150-200 words" not in result.output
    monkeypatch.setattr(magihuman.demo.bundle, "demo_checkpoint_root", lambda: (tmp_path / "random", False))
    monkeypatch.setattr(magihuman.demo.bundle, "demo_is_trained", lambda: False)
    result = run("generate", "--demo", "--prompt", caption.format("dark"), "-o", "random.mp4")
    assert result.exit_code == 0 and "RANDOM weights" in result.output and "on dark skin" not in result.output
    assert "the prompt has 27 words; the model was tuned for 150-200 words" in " ".join(result.output.split())


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--seconds", "0"], ["seconds must be a positive number"]),
        (["--seconds", "-1"], ["seconds"]),
        (["--image", "no_such.png"], ["image file not found", "no_such.png"]),
        (["--audio_path", "no_such.wav"], ["audio file not found"]),
        (["-o", "clip.mov"], ["must end in .mp4"]),
        (["-o", "missing_dir/clip.mp4"], ["output folder does not exist"]),
        (["--width", "16"], ["at least 32"]),
        (["--device", "warp9"], ["unknown device"]),
        (["--prompt-file", "no_prompt.txt"], ["prompt file not found"]),
    ],
)
def test_bad_input_exits_2_before_loading(fake, root, args, needles):
    args = ["--prompt", PROMPT, *args] if "--prompt-file" not in args else args
    assert_bad_input(run("generate", *args, "--checkpoint-root", root), *needles)
    assert fake.calls == []


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt(fake, root, prompt):
    assert_bad_input(run("generate", "--prompt", prompt, "--checkpoint-root", root), "prompt is empty")
    assert fake.calls == []


def test_prompt_sources(fake, root, tmp_path):
    (tmp_path / "p.txt").write_text(PROMPT)
    both = run("generate", "--prompt", PROMPT, "--prompt-file", tmp_path / "p.txt", "--checkpoint-root", root)
    assert_bad_input(both, "either --prompt or --prompt-file")
    assert_bad_input(run("generate", "--seconds", 2, "--checkpoint-root", root), "no prompt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert_bad_input(run("generate", "--prompt-file", tmp_path / "latin1.txt", "--checkpoint-root", root), "not UTF-8")
    assert fake.calls == []


def test_existing_output_needs_overwrite(fake, root):
    Path("taken.mp4").write_bytes(b"old")
    result = run("generate", "--prompt", PROMPT, "-o", "taken.mp4", "--checkpoint-root", root)
    assert_bad_input(result, "already exists", "--overwrite")
    assert "overwrite=True" not in result.output
    assert fake.calls == [] and Path("taken.mp4").read_bytes() == b"old"
    result = run("generate", "--prompt", PROMPT, "-o", "taken.mp4", "--overwrite", "--checkpoint-root", root)
    assert result.exit_code == 0, result.output
    assert len(fake.calls) == 1 and Path("taken.mp4").stat().st_size > 3


def test_checkpoint_locations(fake, root, tmp_path):
    assert_bad_input(run("generate", "--prompt", PROMPT), "no checkpoint root", "magihuman download", "--demo")
    assert_bad_input(run("generate", "--prompt", PROMPT, "--checkpoint-root", tmp_path / "nowhere"),
                     "not a folder", "magihuman download --root")
    shutil.rmtree(root / "t5gemma-9b-9b-ul2")
    shutil.rmtree(root / "base")
    assert_bad_input(run("generate", "--prompt", PROMPT, "--checkpoint-root", root, "--preset", "base"),
                     "lacks base/, t5gemma-9b-9b-ul2/", "--preset base")
    assert_bad_input(run("generate", "--prompt", PROMPT, "--checkpoint-root", root, "--text-encoder", tmp_path / "te"),
                     "--text-encoder path not found")
    assert_bad_input(run("generate", "--prompt", PROMPT, "--demo", "--checkpoint-root", root),
                     "--demo", "--checkpoint-root")
    assert fake.calls == []
    # A missing root folder is fine when its component is given explicitly.
    result = run("generate", "--prompt", PROMPT, "--checkpoint-root", root, "--text-encoder", root / "distill",
                 "-o", "x.mp4")
    assert result.exit_code == 0, result.output
    assert fake.calls[-1]["text_encoder"] == root / "distill"


def test_load_and_generation_failures_exit_1(monkeypatch, root):
    pipe = FakePipeline([], fail_load=FileNotFoundError("no weights in distill/"))
    monkeypatch.setattr(pipeline.MagiHumanPipeline, "from_official", pipe.from_official)
    result = run("generate", "--prompt", PROMPT, "--checkpoint-root", root, "-o", "x.mp4")
    assert result.exit_code == 1, result.output
    assert "error: could not load the checkpoints: no weights in distill/" in result.output
    assert "Traceback" not in result.output and not Path("x.mp4").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(fake, root):
    assert_bad_input(run("generate", "--prompt", PROMPT, "--device", "cuda", "--checkpoint-root", root),
                     "CUDA is not available", "--device cpu")


# ------------------------------------------------------------------------------------------------ download


def test_download_offline(tmp_path):
    result = run("download", "--root", tmp_path / "ckpt", env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 1, result.output
    assert "cannot reach the Hugging Face hub" in result.output and "--checkpoint-root" in result.output
    assert "gated" in result.output and "hf auth login" in result.output  # the gated-model note comes first
    assert "huggingface-cli" not in result.output  # the old command name is gone
    assert "Traceback" not in result.output and not (tmp_path / "ckpt").exists()


def test_download_hub_errors(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    monkeypatch.setattr(hub, "hub_offline", lambda: False)

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    result = run("download", "--root", tmp_path)
    assert result.exit_code == 1 and "cannot reach the Hugging Face hub" in result.output
    gated = GatedRepoError.__new__(GatedRepoError)  # skip __init__: it wants an HTTP response

    def refuse(*args, **kwargs):
        raise gated

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    result = run("download", "--root", tmp_path, "--components", "text_encoder")
    assert result.exit_code == 1 and "google/t5gemma-9b-9b-ul2 is gated" in result.output
    assert "hf auth login" in result.output
    assert "Traceback" not in result.output


def test_download_plan_and_selection(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.file_download import DryRunFileInfo

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    calls, size = [], [1_500_000_000]

    def fake_snapshot(repo_id, *, local_dir, allow_patterns, dry_run=False):
        calls.append((repo_id, Path(local_dir), tuple(allow_patterns), dry_run))
        return [DryRunFileInfo("abc", size[0], f"{allow_patterns[0]}.bin", "", False, True)]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    result = run("download", "--root", tmp_path, "--preset", "all", "--components", "dit,video_vae", "--dry-run")
    assert result.exit_code == 0, result.output
    assert calls == [
        ("GAIR/daVinci-MagiHuman", tmp_path / ".", ("distill/*",), True),
        ("GAIR/daVinci-MagiHuman", tmp_path / ".", ("base/*",), True),
        ("GAIR/daVinci-MagiHuman", tmp_path / ".", ("540p_sr/*",), True),
        ("GAIR/daVinci-MagiHuman", tmp_path / ".", ("1080p_sr/*",), True),
        ("Wan-AI/Wan2.2-TI2V-5B", tmp_path / "Wan2.2-TI2V-5B", ("Wan2.2_VAE.pth",), True),
    ]
    assert "7.5 GB" in result.output and "1.5 GB" in result.output
    calls.clear()
    size[0] = 1000  # small enough for the free-space check
    result = run("download", "--root", tmp_path / "new", "--components", "audio_vae")
    assert result.exit_code == 0, result.output
    assert [c[3] for c in calls] == [True, False] and calls[1][2] == ("model_config.json", "model.safetensors")
    assert "--checkpoint-root" in result.output
    assert_bad_input(run("download", "--components", "vocoder"), "unknown component", "text_encoder")


def test_download_default_selection():
    names = [(s.name, s.folder) for s in hub.select_sources("distill")]
    assert names == [("dit", "distill"), ("turbo_vae", "turbo_vae"), ("text_encoder", "t5gemma-9b-9b-ul2"),
                     ("audio_vae", "stable-audio-open-1.0"), ("video_vae", "Wan2.2-TI2V-5B")]


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """One demo bundle for the session, outside the user's cache."""
    return tmp_path_factory.mktemp("demo") / "bundle"


def test_generate_demo_image_to_video(examples_dir, demo_dir, tmp_path, monkeypatch):
    from magihuman.pipeline.media import probe_media

    monkeypatch.setenv("MAGIHUMAN_DEMO_DIR", str(demo_dir))
    out = tmp_path / "out.mp4"
    result = run("generate", "--demo", "--prompt", PROMPT, "--image", examples_dir / "image.png", "--seconds", 2,
                 "--output", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    info = probe_media(out)
    assert (info["num_video_streams"], info["video_codec"], info["num_frames"]) == (1, "h264", 49)
    assert (info["width"], info["height"], info["fps"]) == (448, 256, 25.0)
    assert (info["num_audio_streams"], info["audio_codec"]) == (1, "aac")
    assert info["audio_header_duration"] == pytest.approx(2.04, abs=0.01)
    assert info["audio_duration"] == pytest.approx(2.04, abs=1024 / 44100)  # AAC frame padding


def test_generate_demo_audio_driven_text_to_video(demo_dir, tone, tmp_path, monkeypatch):
    """No image (text-to-video) and a driving audio track, at a small size to stay fast."""
    from magihuman.pipeline.media import probe_media

    monkeypatch.setenv("MAGIHUMAN_DEMO_DIR", str(demo_dir))
    out = tmp_path / "a2v.mp4"
    result = run("generate", "--demo", "--prompt", PROMPT, "--audio", tone, "--seconds", 1, "--width", 128,
                 "--height", 64, "--output", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    info = probe_media(out)
    assert (info["video_codec"], info["num_frames"], info["width"], info["height"]) == ("h264", 25, 128, 64)
    assert info["audio_codec"] == "aac"
    assert info["audio_header_duration"] == pytest.approx(1.0, abs=0.01)  # the driving track, kept


def test_sr_size_selects_an_sr_preset(fake, root):
    """--sr-width/--sr-height without an SR preset pick sr_540p (<= 720 px high) or sr_1080p."""
    result = run("generate", "--prompt", PROMPT, "--sr-width", "896", "--sr-height", "512", "--sr_cfg_number", "2",
                 "--checkpoint-root", root, "-o", "sr.mp4")
    assert result.exit_code == 0, result.output
    assert "using preset sr_540p" in result.output
    (request,) = fake.requests
    assert (request.preset, request.sr_width, request.sr_height, request.sr_cfg_number) == ("sr_540p", 896, 512, 2)
    assert fake.calls[0]["preset"] == "sr_540p"
    result = run("generate", "--prompt", PROMPT, "--sr-width", "896", "--checkpoint-root", root, "-o", "x.mp4")
    assert result.exit_code == 2 and "both" in result.output


def test_generate_demo_super_resolution(tmp_path):
    """The SR preset end to end on the demo bundle: the MP4 has the SR size (issue: --demo --preset sr_540p)."""
    from magihuman.pipeline.media import probe_media

    out = tmp_path / "sr.mp4"
    result = run("generate", "--demo", "--prompt", PROMPT, "--preset", "sr_540p", "--seconds", "0.4",
                 "--width", "64", "--height", "64", "--sr-width", "128", "--sr-height", "96", "--output", out)
    assert result.exit_code == 0, result.output
    info = probe_media(out)
    assert (info["video_codec"], info["num_frames"], info["width"], info["height"]) == ("h264", 9, 128, 96)
    assert info["audio_codec"] == "aac"


def test_video_decoder_choice_reaches_the_pipeline(fake, root):
    result = run("generate", "--prompt", PROMPT, "--video-decoder", "wan", "--checkpoint-root", root, "-o", "w.mp4")
    assert result.exit_code == 0, result.output
    assert fake.calls[0]["video_decoder"] == "wan"
    result = run("generate", "--prompt", PROMPT, "--video-decoder", "wan", "--turbo-vae", root / "turbo_vae",
                 "--checkpoint-root", root, "-o", "w2.mp4")
    assert result.exit_code == 2 and "--turbo-vae is only used" in result.output


def test_cp_without_torchrun_is_explained(fake, root, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = run("generate", "--prompt", PROMPT, "--cp", "2", "--checkpoint-root", root, "-o", "cp.mp4")
    assert result.exit_code == 2 and "torchrun --nproc_per_node 2" in result.output
    assert not fake.calls


def test_torchrun_sequence_parallel_demo(tmp_path):
    """`torchrun --nproc_per_node 2 -m magihuman generate --cp 2 --shard` (gloo on CPU): Ulysses sequence
    parallelism over FSDP2-sharded weights; the last rank writes the MP4."""
    import os
    import subprocess
    import sys

    from magihuman.demo.bundle import ensure_demo_bundle
    from magihuman.pipeline.media import probe_media

    ensure_demo_bundle()  # built once here rather than raced by the two ranks
    out = tmp_path / "cp2.mp4"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "magihuman", "generate", "--demo", "--cp", "2", "--shard", "--prompt", PROMPT, "--seconds", "0.4",
               "--width", "64", "--height", "64", "--output", str(out), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    info = probe_media(out)
    assert (info["num_frames"], info["width"], info["height"]) == (9, 64, 64)
    assert done.stderr.count("wrote ") + done.stdout.count("wrote ") == 1  # one writer


def test_memory_and_speed_flags_reach_the_pipeline(fake, root):
    """Each --fp8 / --compile / --attention / --decode-tile-size flag becomes a RuntimeOptions field (issue 5)."""
    result = run("generate", "--prompt", PROMPT, "--fp8", "--compile", "--attention", "flex", "--decode-tile-size",
                 "16", "--device", "cpu", "--checkpoint-root", root, "-o", "m.mp4")
    assert result.exit_code == 0, result.output
    assert fake.calls[0]["runtime"] == RuntimeOptions(fp8=True, compile=True, attention="flex",
                                                               decode_tile=16)
    assert fake.calls[0]["runtime"].batch_cfg  # batched CFG is the default
    result = run("generate", "--prompt", PROMPT, "--no-batch-cfg", "--device", "cpu", "--checkpoint-root", root,
                 "-o", "n.mp4")
    assert result.exit_code == 0, result.output
    assert fake.calls[1]["runtime"] == RuntimeOptions(batch_cfg=False)


def test_gpu_switches_become_runtime_options():
    """The GPU-only switches (refused on a CPU run, tests/test_bad_inputs.py) map to their fields by name."""
    options = GenerateOptions(offload=["blocks", "components", "blocks"], offload_blocks_per_group=2, fp8_gemm=True)
    assert cli_generate._runtime_options(options) == RuntimeOptions(
        fp8=True, fp8_gemm=True, offload=("blocks", "components"), blocks_per_group=2)


@pytest.mark.parametrize("args, needle", [
    (("--offload", "components"), "drop it"),  # CPU-only machine
    (("--offload", "blocks"), "drop it"),
    (("--fp8-gemm",), "drop it"),
    (("--offload", "disk"), "choose components or blocks"),
    (("--shard",), "torchrun --nproc_per_node N"),
    (("--attention", "fa3"), "FlashAttention-3"),
    (("--offload", "blocks", "--shard"), "torchrun"),
])
def test_memory_flags_are_checked_before_loading(fake, root, args, needle):
    result = run("generate", "--prompt", PROMPT, *args, "--device", "cpu", "--checkpoint-root", root, "-o", "x.mp4")
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not fake.calls
