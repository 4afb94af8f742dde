"""Host offload: stream the DiT layers from host memory (``--offload blocks``), or lend each pipeline
component to the GPU for its own stage only (``--offload components``).

| switch | GPU memory of the 15B DiT's weights | speed |
|---|---|---|
| :func:`enable_block_streaming` | ``84 MB`` resident (adapter + heads, fp32) ``+ (1 + prefetch) x blocks_per_group x`` one layer (0.55 GB shared, 1.64 GB sandwich, bf16); host RAM holds the layers | bound by host-to-device copies: ~30.6 GB per forward (~1.2 s at 25 GB/s pinned); hidden behind compute only at long sequences (SR) |
| :class:`ComponentOffload` / :func:`offload_idle_components` | only the running stage's component: max(DiT 30.6 GB, T5Gemma encoder 18.5 GB, VAE) instead of their sum (~52 GB + SR DiT) | one host-device round trip per component per request (~1-3 s for a 15B DiT) |

The two combine: :class:`ComponentOffload` leaves streamed (and FSDP-sharded) models in place.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from magihuman.runtime.state import as_device, is_block_streamed, is_self_placed, is_sharded

logger = logging.getLogger(__name__)

__all__ = ["enable_block_streaming", "on_device", "PIPELINE_COMPONENTS", "ComponentOffload", "offload_idle_components"]


# ===================================================================================== block streaming
def enable_block_streaming(model: nn.Module, *, onload_device: str | torch.device,
                           offload_device: str | torch.device = "cpu", blocks_per_group: int = 1,
                           prefetch: bool = True, low_cpu_mem_usage: bool = False) -> nn.Module:
    """Keep the transformer layers on ``offload_device`` and stream them to ``onload_device`` during forward.

    CLI: ``--offload blocks`` (and ``--offload-blocks-per-group K``). Memory/speed: GPU holds the
    adapter and heads (84 MB fp32 for the 15B, resident) plus ``blocks_per_group`` layers being run
    and, with prefetch, the next group being copied: <= 2 x 1.64 GB (sandwich layers, bf16; 0.82 GB
    with FP8) + activations. Host RAM holds all layers pinned (30.6 GB bf16, 15.4 GB FP8; twice that
    briefly while diffusers pins them, unless ``low_cpu_mem_usage``). Every forward copies all layers:
    ~30.6 GB, ~1.2 s at 25 GB/s, so short sequences are copy-bound; at SR sizes the copy hides behind
    compute.

    Uses diffusers group offloading (``block_level`` over ``block.layers``, ``block_modules=["block"]``,
    a CUDA side stream for prefetch). The adapter and output heads are kept on ``onload_device``
    between calls, so ``next(model.parameters()).device`` still reports the compute device. Inputs
    are moved to ``onload_device`` by the hooks. Load the model on the CPU first (e.g.
    ``from_official(device="cpu")``) so that the 15B weights never have to fit on the GPU.

    ``onload_device == offload_device == "cpu"`` is accepted as a functional check (what the CPU tests
    run); any other equal pair is an error.

    Args:
        model: a :class:`~magihuman.model.transformer.MagiHumanTransformer` (``block.layers`` ModuleList).
        onload_device: where layers run (``"cuda"``).
        offload_device: where layers wait (``"cpu"``).
        blocks_per_group: layers moved together (>= 1). Prefetch on CUDA requires 1.
        prefetch: copy the next group on a CUDA side stream while the current one runs (CUDA only;
            elsewhere groups load synchronously).
        low_cpu_mem_usage: pin host memory per transfer instead of once (less host RAM, slower).

    Returns:
        ``model``.

    Raises:
        ValueError: for a bad device name, equal non-CPU devices, ``blocks_per_group`` < 1 or above
            the layer count, prefetch with more than one block per group on CUDA, a model without
            ``block.layers``, or a model that is already streamed or FSDP-sharded.
    """
    onload, offload = as_device(onload_device, "onload_device"), as_device(offload_device, "offload_device")
    if onload == offload and onload.type != "cpu":
        raise ValueError(
            f"offload_device equals onload_device ({onload}): streaming would move nothing; use "
            "offload_device='cpu', or drop --offload blocks if the model fits on the device"
        )
    layers = getattr(getattr(model, "block", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "enable_group_offload"):
        raise ValueError(f"{type(model).__name__} has no block.layers ModuleList; pass a MagiHumanTransformer")
    if isinstance(blocks_per_group, bool) or not isinstance(blocks_per_group, int) or not 1 <= blocks_per_group <= len(layers):
        raise ValueError(f"blocks_per_group must be an int in 1..{len(layers)}, got {blocks_per_group!r}")
    use_stream = bool(prefetch) and onload.type == "cuda"
    if use_stream and blocks_per_group != 1:
        raise ValueError(
            f"prefetch streams one layer at a time; got blocks_per_group={blocks_per_group}. "
            "Pass blocks_per_group=1, or prefetch=False to move several layers per copy"
        )
    if is_block_streamed(model):
        raise ValueError("block streaming is already enabled on this model")
    if is_sharded(model):
        raise ValueError("the model is FSDP-sharded; use either shard_transformer or enable_block_streaming, not both")

    model.enable_group_offload(
        onload_device=onload, offload_device=offload, offload_type="block_level",
        num_blocks_per_group=blocks_per_group, use_stream=use_stream, non_blocking=use_stream,
        low_cpu_mem_usage=low_cpu_mem_usage, block_modules=["block"],
    )
    _keep_top_level_resident(model, onload)
    return model


def _keep_top_level_resident(model: nn.Module, device: torch.device) -> None:
    """Make diffusers' top-level group (adapter, heads, RoPE buffer) live on ``device`` for good."""
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
    if hook is None:  # diffusers changed its layout: fall back to moving them per call (~84 MB)
        logger.warning("could not pin the adapter and heads to %s; diffusers will move them on each call", device)
        return
    hook.group.offload_device = device
    hook.group.onload_()



# ==================================================================================== component offload
def _move(component: Any, device: torch.device) -> None:
    component.to(device)


@contextlib.contextmanager
def on_device(component: Any, device: str | torch.device, offload_device: str | torch.device = "cpu") -> Iterator[Any]:
    """Move ``component`` to ``device`` for the ``with`` block, then to ``offload_device`` (also on error).

    Memory: the component occupies ``device`` only inside the block. Works with anything that has
    ``.to(device)``: ``nn.Module``, :class:`~magihuman.codecs.text_encoder.TextEncoder`,
    :class:`~magihuman.codecs.video_vae.VideoVAE`, :class:`~magihuman.codecs.audio_vae.AudioVAE`.
    ``None`` is passed through untouched.

    Raises:
        ValueError: for a bad device name.
    """
    device, offload = as_device(device, "device"), as_device(offload_device, "offload_device")
    if component is None:
        yield None
        return
    _move(component, device)
    try:
        yield component
    finally:
        _move(component, offload)


#: Pipeline attributes that ComponentOffload manages, in stage order.
PIPELINE_COMPONENTS = ("text_encoder", "transformer", "sr_transformer", "video_vae", "video_decoder", "audio_vae")


@dataclass
class ComponentOffload:
    """Lend each pipeline component to the compute device for its own stage only.

    CLI: ``--offload components``. Memory: device memory is the largest single component plus
    activations instead of the sum (15B DiT 30.6 GB, T5Gemma-9B encoder 18.5 GB bf16, SR DiT 30.6 GB,
    Wan2.2 VAE 1.4 GB bf16, Stable Audio VAE 0.6 GB fp32); host RAM holds the rest. Speed: each stage
    pays one host-to-device copy of its component (~1-3 s for a 15B DiT, ~1 s for the text encoder,
    pinned memory faster) and one copy back.

    Components that place their own weights (block streaming, FSDP sharding) are never moved.

    Attributes:
        pipe: a :class:`~magihuman.pipeline.magihuman_pipeline.MagiHumanPipeline` (or any object with the
            :data:`PIPELINE_COMPONENTS` attributes; missing or None ones are skipped).
        device: the compute device.
        offload_device: where idle components wait (``"cpu"``).
        resident: component names that stay on ``device`` (e.g. ``("audio_vae",)``, 0.6 GB).
    """

    pipe: Any
    device: torch.device
    offload_device: torch.device = torch.device("cpu")
    resident: tuple[str, ...] = ()
    _names: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = as_device(self.device, "device")
        self.offload_device = as_device(self.offload_device, "offload_device")
        if self.device == self.offload_device:
            raise ValueError(
                f"the compute device and the offload device are both {self.device}: nothing to offload; "
                "drop --offload components, or run on a GPU"
            )
        unknown = sorted(set(self.resident) - set(PIPELINE_COMPONENTS))
        if unknown:
            raise ValueError(f"unknown resident components {unknown}; choose from {list(PIPELINE_COMPONENTS)}")
        self._names = tuple(n for n in PIPELINE_COMPONENTS if getattr(self.pipe, n, None) is not None)

    @property
    def execution_device(self) -> torch.device:
        """Where the stages compute (the pipeline should create its latents here)."""
        return self.device

    def _distinct(self, names: Iterable[str]) -> list[tuple[str, Any]]:
        seen: set[int] = set()
        out = []
        for name in names:
            if name not in PIPELINE_COMPONENTS:
                raise ValueError(f"unknown pipeline component {name!r}; choose from {list(PIPELINE_COMPONENTS)}")
            component = getattr(self.pipe, name, None)
            if component is None or id(component) in seen or is_self_placed(component):
                continue
            seen.add(id(component))
            out.append((name, component))
        return out

    def offload_all(self) -> None:
        """Park every managed component on the offload device (resident ones on the compute device)."""
        resident = {id(getattr(self.pipe, n)) for n in self.resident if getattr(self.pipe, n, None) is not None}
        for _, component in self._distinct(self._names):
            _move(component, self.device if id(component) in resident else self.offload_device)

    @contextlib.contextmanager
    def stage(self, *names: str) -> Iterator[None]:
        """Move the named components (e.g. ``"text_encoder"``) to the device for the block, then back.

        The same object under two names (``video_vae`` is also ``video_decoder`` without the Turbo
        decoder) moves once. Resident and self-placed components are not moved.
        """
        resident = {id(getattr(self.pipe, n, None)) for n in self.resident}
        moving = [component for _, component in self._distinct(names) if id(component) not in resident]
        with contextlib.ExitStack() as stack:
            for component in moving:
                stack.enter_context(on_device(component, self.device, self.offload_device))
            yield


def offload_idle_components(pipe: Any, device: str | torch.device, *, offload_device: str | torch.device = "cpu",
                            resident: Sequence[str] = ()) -> ComponentOffload:
    """Park every component of ``pipe`` on ``offload_device`` and return the :class:`ComponentOffload`
    whose :meth:`~ComponentOffload.stage` lends each one to ``device`` for its stage.

    CLI: ``--offload components``. Memory/speed: see :class:`ComponentOffload`.

    Raises:
        ValueError: for equal devices, a bad device name or an unknown resident component.
    """
    offload = ComponentOffload(pipe, device, offload_device, tuple(resident))
    offload.offload_all()
    return offload
