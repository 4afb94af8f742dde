"""Parity figures against the golden vectors of the original implementation (what docs/parity.md records).

    PYTHONPATH=src python benchmarks/parity_report.py [--golden ../shared/golden] [--json out.json]

Every row loads a golden case the way ``tests/test_*.py`` do, runs this package on the recorded inputs
and compares the result with the tensor the original code wrote: max |diff|, rel_l2 = ||got - want|| /
||want||, and "bitwise" when every value is equal. The gate column is what the tests assert. For
``dit_forward_a`` a second table lists every layer: run on the reference's input to that layer
(isolated), and inside our own forward (chained). Prints markdown; ``--json`` also writes the figures.
The exit status is 1 when any row misses its gate. Record figures in docs/parity.md with date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

# Package imports: the only lines to change when modules move.
from magihuman.codecs.audio_vae import AudioVAE, resample_to_output_rate
from magihuman.codecs.turbo_vae import TurboVAE
from magihuman.codecs.video_vae import WAN22_CHECKPOINT_NAME, VideoVAE
from magihuman.model.packing import build_coords, local_attention_ranges, patchify_video, token_layout
from magihuman.model.transformer import MagiHumanTransformer
from magihuman.pipeline.media import preprocess_image, video_to_uint8
from magihuman.sampling.config import DISTILL_SAMPLER
from magihuman.sampling.loop import denoise
from magihuman.sampling.records import Latents, TextConditioning
from magihuman.sampling.schedulers import shifted_schedule

DEFAULT_GOLDEN = Path(os.environ.get("MAGIHUMAN_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "golden"
TRANSFORMER_FIELDS = ("num_layers", "hidden_size", "head_dim", "num_query_groups", "video_in_channels",
                      "audio_in_channels", "text_in_channels", "mm_layers", "gelu7_layers", "local_attn_layers",
                      "enable_attn_gating")


def compare(got, want) -> dict:
    """max |diff|, rel_l2 and bitwise equality of two arrays/tensors of the same shape."""
    got, want = (x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x)) for x in (got, want))
    if got.shape != want.shape:
        raise ValueError(f"shape {tuple(got.shape)} != {tuple(want.shape)}")
    a, b = got.double(), want.double()
    diff = (a - b).abs()
    norm = float(b.norm())
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "rel_l2": float((a - b).norm()) / norm if norm else float((a - b).norm()),
            "equal_fraction": float((diff == 0).double().mean()), "bitwise": bool(torch.equal(a, b))}


class Report:
    def __init__(self):
        self.rows: list[dict] = []
        self.layers: list[dict] = []

    def add(self, case: str, what: str, gate: str, metrics: dict, meets: bool | None = None) -> None:
        self.rows.append({"case": case, "comparison": what, "gate": gate, **metrics,
                          "meets_gate": metrics["bitwise"] if meets is None else bool(meets)})


def rel_gate(m: dict, rel: float, top: float) -> bool:
    return m["rel_l2"] <= rel and m["max_abs"] <= top


# ------------------------------------------------------------------------------------------ transformer
def golden_transformer(golden: Path) -> MagiHumanTransformer:
    config = json.loads((golden / "dit_forward_a" / "case.json").read_text())["model_config"]
    fields = {name: config[name] for name in TRANSFORMER_FIELDS}
    return MagiHumanTransformer.from_official(golden / "dit_forward_a" / "checkpoint", progress=False, **fields)


def layer_outputs(model, inputs, reference=None, reference_final=None):
    """Run the public forward with hooks: collect every layer's output; with ``reference``, feed each layer
    i >= 1 the reference's output of layer i - 1 (isolated layers); with ``reference_final``, make the last
    layer return it (so the returned velocities are the output heads applied to the reference residual)."""
    outputs, handles = [], []
    layers = model.block.layers
    for i, layer in enumerate(layers):
        if reference is not None and i > 0:
            handles.append(layer.register_forward_pre_hook(
                lambda mod, args, i=i: (reference[i - 1][None].to(args[0]), *args[1:])))

        def keep(mod, args, out, i=i):
            outputs.append(out[0].detach().clone())
            if reference_final is not None and i == len(layers) - 1:
                return reference_final[None].to(out)
            return None
        handles.append(layer.register_forward_hook(keep))
    try:
        with torch.no_grad():
            velocities = model(inputs["video_latent"], inputs["audio_latent"], inputs["text_embedding"])
    finally:
        for handle in handles:
            handle.remove()
    return outputs, velocities


def dit_forward_a(golden: Path, report: Report, model: MagiHumanTransformer) -> None:
    case = golden / "dit_forward_a"
    inputs = load_file(case / "inputs.safetensors")
    outputs = load_file(case / "outputs.safetensors")
    inter = load_file(case / "intermediates.safetensors")
    layout = token_layout(inputs["video_latent"], inputs["audio_latent"], inputs["text_embedding"])
    coords = build_coords(layout, "v2")
    bitwise = "bitwise (torch.equal)"
    report.add("dit_forward_a", "packed video tokens (channel-major patchify)", bitwise,
               compare(patchify_video(inputs["video_latent"])[0], inter["packed_video_tokens"]))
    report.add("dit_forward_a", "coordinates [N, 9] (v2)", bitwise, compare(coords, inter["coords_mapping"]))
    with torch.no_grad():
        report.add("dit_forward_a", "RoPE table [N, 6B]", bitwise,
                   compare(model.adapter.rope(coords), inter["rope_table"]))
    q_ranges, k_ranges = local_attention_ranges(layout, 11)
    report.add("dit_forward_a", "local-attention range tables (q and k, R = 11)", bitwise,
               compare(torch.cat([q_ranges, k_ranges]), torch.cat([inter["local_q_ranges"], inter["local_k_ranges"]])))

    reference = inter["layer_outputs"]
    isolated, head_velocities = layer_outputs(model, inputs, reference, reference[-1])
    chained, (video, audio) = layer_outputs(model, inputs)
    config = model.config
    for i in range(len(reference)):
        kind = "sandwich" if i in config.mm_layers else "shared"
        kind += ", gelu7" if i in config.gelu7_layers else ", swiglu7"
        kind += ", local attention" if i in config.local_attn_layers else ", full attention"
        source = "our embedders" if i == 0 else f"reference layer {i - 1} output"
        report.layers.append({"layer": i, "kind": kind, "input": source,
                              "isolated": compare(isolated[i], reference[i]),
                              "chained": compare(chained[i], reference[i])})
    for name, got in (("video", head_velocities[0]), ("audio", head_velocities[1])):
        report.add("dit_forward_a", f"output heads on the reference final residual: {name} velocity",
                   "max_abs <= 1e-5 (float32 GEMM ulps)", m := compare(got, outputs[f"{name}_velocity"]),
                   m["max_abs"] <= 1e-5)
    gate = "rel_l2 <= 3e-2, max_abs <= 0.15"
    for name, got in (("video", video), ("audio", audio)):
        m = compare(got, outputs[f"{name}_velocity"])
        report.add("dit_forward_a", f"full forward: {name} velocity", gate, m, rel_gate(m, 3e-2, 0.15))
    with torch.no_grad():
        again = model(inputs["video_latent"], inputs["audio_latent"], inputs["text_embedding"])
    report.add("dit_forward_a", "repeat call equals the first call (no state kept)", bitwise, compare(again[0], video))


# ------------------------------------------------------------------------------------------ sampler
class Replay:
    """A model stand-in that returns the recorded velocities call by call."""

    def __init__(self, video, audio):
        self.velocities = list(zip(video, audio))

    def __call__(self, video, audio, text, **kwargs):
        v_video, v_audio = self.velocities.pop(0)
        return v_video.clone(), v_audio.clone()


def sampler_distill(golden: Path, report: Report, model: MagiHumanTransformer) -> None:
    data = load_file(golden / "sampler_distill" / "sampler.safetensors")
    sigmas, timesteps = shifted_schedule(8)
    bitwise = "bitwise (torch.equal)"
    report.add("sampler_distill", "8-step schedule: sigmas and timesteps", bitwise,
               compare(torch.cat([sigmas.double(), timesteps.double()]),
                       torch.cat([data["sigmas"].double(), data["timesteps"].double()])))
    noise = [(data["renoise_video"][k], data["renoise_audio"][k]) for k in range(8)]
    context = data["context"][:, :7]  # original_context_len = 7
    for run, image in (("t2v", None), ("ti2v", data["image_latent"])):
        steps = []
        replay = Replay(data[f"{run}.cond_v_video"], data[f"{run}.cond_v_audio"])
        denoise(replay, Latents(data["initial_video_noise"], data["initial_audio_noise"]), TextConditioning(context),
                config=DISTILL_SAMPLER, image_latent=image, renoise_noise=noise,
                callback=lambda k, t, s, steps=steps: steps.append((s.video.clone(), s.audio.clone())))
        got = torch.cat([torch.stack([v for v, _ in steps]).flatten(), torch.stack([a for _, a in steps]).flatten()])
        want = torch.cat([data[f"{run}.step_video_latent"].flatten(), data[f"{run}.step_audio_latent"].flatten()])
        report.add("sampler_distill", f"{run}: replay of recorded velocities and re-noise draws, all 8 step latents",
                   bitwise, compare(got, want))
        generator = torch.Generator().manual_seed(3001)  # case.json noise.seed: audio, video, then 2 eps per step
        initial_audio = torch.randn(data["initial_audio_noise"].shape, generator=generator)
        initial_video = torch.randn(data["initial_video_noise"].shape, generator=generator)
        replay = Replay(data[f"{run}.cond_v_video"], data[f"{run}.cond_v_audio"])
        out = denoise(replay, Latents(initial_video, initial_audio), TextConditioning(context),
                      config=DISTILL_SAMPLER, image_latent=image, generator=generator)
        video, audio = out.video, out.audio
        report.add("sampler_distill",
                   f"{run}: same replay drawing all noise from a seeded generator (draw order), final latents",
                   bitwise, compare(torch.cat([video.flatten(), audio.flatten()]),
                                    torch.cat([data[f"{run}.final_video_latent"].flatten(),
                                               data[f"{run}.final_audio_latent"].flatten()])))
        with torch.no_grad():
            out = denoise(model, Latents(data["initial_video_noise"], data["initial_audio_noise"]),
                          TextConditioning(context), config=DISTILL_SAMPLER, image_latent=image, renoise_noise=noise)
        video, audio = out.video, out.audio
        for name, got in (("video", video), ("audio", audio)):
            m = compare(got, data[f"{run}.final_{name}_latent"])
            report.add("sampler_distill", f"{run}: end to end with our transformer, final {name} latent",
                       "rel_l2 <= 3e-2, max_abs <= 0.15", m, rel_gate(m, 3e-2, 0.15))


# ------------------------------------------------------------------------------------------ codecs
def codec_wan22_vae(golden: Path, report: Report) -> None:
    case = golden / "codec_wan22_vae"
    t = load_file(case / "wan22.safetensors")
    name = "codec_wan22_vae"
    report.add(name, "preprocessed image (crop, Lanczos resize, [-1, 1])", "bitwise (torch.equal)",
               compare(preprocess_image(case / "input_image.png", width=96, height=64), t["encode.preprocessed_image"]))
    f32 = VideoVAE.from_official(case, dtype=torch.float32)
    bf16 = VideoVAE.from_official(case / WAN22_CHECKPOINT_NAME)
    mean, inv_std = bf16.normalization_constants()
    report.add(name, "bf16 normalisation constants (mean, 1/std)", "bitwise (torch.equal)",
               compare(torch.cat([mean.flatten(), inv_std.flatten()]).float(),
                       torch.cat([t["wrapper_mean_bf16"], t["wrapper_inv_std_bf16"]]).float()))
    pixels = t["encode.preprocessed_image"].unsqueeze(2)
    with torch.no_grad():
        m = compare(f32.decode(t["decode.latent"]), t["f32.decode.video"])
        report.add(name, "float32 decode vs f32.decode.video", "max_abs < 1e-5, rel_l2 < 1e-5", m,
                   m["max_abs"] < 1e-5 and m["rel_l2"] < 1e-5)
        m = compare(f32.encode(pixels), t["f32.encode.latent"])
        report.add(name, "float32 encode vs f32.encode.latent", "max_abs < 1e-5", m, m["max_abs"] < 1e-5)
        video = bf16.decode(t["decode.latent"])
        m = compare(video, t["decode.video"])
        report.add(name, "bf16 decode vs decode.video", "rel_l2 <= 0.05, max_abs <= 0.3", m, rel_gate(m, 0.05, 0.3))
        got, want = video_to_uint8(video).astype(np.int16), t["decode.frames_uint8"].numpy().astype(np.int16)
        frames = {**compare(got, want), "within_8": float((np.abs(got - want) <= 8).mean())}
        report.add(name, "bf16 decode, uint8 frames vs decode.frames_uint8", "mean |diff| < 1.5, >= 99 % within 8",
                   frames, frames["mean_abs"] < 1.5 and frames["within_8"] > 0.99)
        m = compare(bf16.encode(pixels), t["encode.latent"])
        report.add(name, "bf16 encode vs encode.latent", "rel_l2 <= 0.05, max_abs <= 0.1", m, rel_gate(m, 0.05, 0.1))


def codec_turbo_vaed(golden: Path, report: Report) -> None:
    case = golden / "codec_turbo_vaed"
    t = load_file(case / "turbo_vaed.safetensors")
    files = case / "TurboV3-Wan22-tiny.json", case / "checkpoint-tiny.ckpt"
    name = "codec_turbo_vaed"
    with torch.no_grad():
        f32 = TurboVAE.from_files(*files, dtype=torch.float32)
        m = compare(f32.decode(t["decode.latent"]), t["f32.decode.video"])
        report.add(name, "float32 sliding-window decode vs f32.decode.video",
                   "rtol 1e-5 + atol 5e-5, mean |diff| <= 5e-6, rel_l2 <= 2e-5", m,
                   m["mean_abs"] <= 5e-6 and m["rel_l2"] <= 2e-5)
        video = TurboVAE.from_files(*files).decode(t["decode.latent"])
        m = compare(video, t["decode.video_bf16"])
        report.add(name, "bf16 sliding-window decode vs decode.video_bf16", "rel_l2 <= 0.1, max_abs <= 0.35", m,
                   rel_gate(m, 0.1, 0.35))
        m = compare(video_to_uint8(video).astype(np.int16), t["decode.frames_uint8"].numpy().astype(np.int16))
        report.add(name, "bf16 decode, uint8 frames vs decode.frames_uint8", ">= 99 % equal, max |diff| <= 2", m,
                   m["equal_fraction"] >= 0.99 and m["max_abs"] <= 2)
        single = f32.model(f32.denormalize(t["decode.latent"]), is_first_chunk=True).float()
        m = compare(single, t["f32.decode.video"])
        report.add(name, "one pass over all 17 frames vs the windowed f32.decode.video (must differ)",
                   "max_abs > 1.0", m, m["max_abs"] > 1.0)


def codec_sa_audio(golden: Path, report: Report) -> None:
    case = golden / "codec_sa_audio"
    t = load_file(case / "sa_audio.safetensors")
    name = "codec_sa_audio"
    vae = AudioVAE.from_official(case)
    with torch.no_grad():
        waveform = vae.decode(t["decode.latent_audio"])
        m = compare(waveform, t["decode.waveform"])
        report.add(name, "decode vs decode.waveform", "max_abs <= 1e-5, rel_l2 <= 1e-5", m,
                   m["max_abs"] <= 1e-5 and m["rel_l2"] <= 1e-5)
        golden_resampled = resample_to_output_rate(t["decode.waveform"][0].numpy().T, axis=0)
        report.add(name, "441/512 resample of the golden waveform vs decode.waveform_resampled",
                   "bitwise (np.array_equal)", compare(golden_resampled, t["decode.waveform_resampled"]))
        m = compare(resample_to_output_rate(waveform[0]).T, t["decode.waveform_resampled"])
        report.add(name, "our decode, resampled, vs decode.waveform_resampled", "max_abs <= 1e-5", m,
                   m["max_abs"] <= 1e-5)
        m = compare(vae.pre_bottleneck(t["encode.waveform"].unsqueeze(0)), t["encode.pre_bottleneck"])
        report.add(name, "encoder output [mean | scale] vs encode.pre_bottleneck", "max_abs <= 1e-5", m,
                   m["max_abs"] <= 1e-5)


# ------------------------------------------------------------------------------------------ output
def figure(m: dict) -> str:
    if m["bitwise"]:
        return "bitwise"
    return f"max_abs {m['max_abs']:.3g}, rel_l2 {m['rel_l2']:.3g}"


def markdown(report: Report) -> str:
    lines = []
    for case in dict.fromkeys(row["case"] for row in report.rows):
        lines += [f"### {case}", "", "| comparison | gate (test) | measured | meets gate |", "|---|---|---|---|"]
        for row in report.rows:
            if row["case"] == case:
                extra = ""
                if "uint8" in row["comparison"] and not row["bitwise"]:
                    extra = f", mean_abs {row['mean_abs']:.3g}, {100 * row['equal_fraction']:.1f} % equal"
                    extra += f", {100 * row['within_8']:.2f} % within 8" if "within_8" in row else ""
                lines.append(f"| {row['comparison']} | {row['gate']} | {figure(row)}{extra} | "
                             f"{'yes' if row['meets_gate'] else '**no**'} |")
        lines.append("")
    if report.layers:
        lines += ["### dit_forward_a, per layer (residual stream after the layer)", "",
                  "| layer | kind | input (isolated run) | isolated | isolated: equal values | chained (our forward) |",
                  "|---|---|---|---|---|---|"]
        for layer in report.layers:
            lines.append(f"| {layer['layer']} | {layer['kind']} | {layer['input']} | {figure(layer['isolated'])} | "
                         f"{100 * layer['isolated']['equal_fraction']:.2f} % | {figure(layer['chained'])} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help=f"golden folder (default {DEFAULT_GOLDEN})")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    if not args.golden.is_dir():
        parser.error(f"golden folder not found: {args.golden}")
    torch.manual_seed(0)
    report = Report()
    model = golden_transformer(args.golden)
    dit_forward_a(args.golden, report, model)
    sampler_distill(args.golden, report, model)
    codec_wan22_vae(args.golden, report)
    codec_turbo_vaed(args.golden, report)
    codec_sa_audio(args.golden, report)
    meta = {"date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    print(f"<!-- {json.dumps(meta)} -->\n")
    print(markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "rows": report.rows, "layers": report.layers}, indent=1) + "\n")
    return 0 if all(row["meets_gate"] for row in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
