"""``magihuman extend``: continue an existing clip from its last frames and sound (docs/long_clips.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from magihuman.cli.clip_commands import clip_stem, command_signature, run_edit
from magihuman.pipeline.presets import DEFAULT_EXTEND_PREFIX_FRAMES, DEFAULT_OVERLAP_FRAMES, DEFAULT_SECONDS
from magihuman.pipeline.validation import MAX_LONG_SECONDS, MAX_OVERLAP_FRAMES

__all__ = ["extend"]

_OWN = {
    "seconds": (Annotated[float, typer.Option("--seconds", "-s", help=f"Length of the continuation in seconds, up "
                f"to {MAX_LONG_SECONDS:g} (rounded up to whole latent frames, 0.16 s); longer than one window it "
                f"runs in windows.")], DEFAULT_SECONDS),
    "overlap_frames": (Annotated[int | None, typer.Option("--overlap-frames", help=f"Latent frames of the clip's end "
                       f"(4 video frames each, plus their sound) held as they are, 1..{MAX_OVERLAP_FRAMES}; also the "
                       f"overlap between windows. Default: {DEFAULT_EXTEND_PREFIX_FRAMES} of the clip (fewer for a "
                       f"clip under 13 frames), {DEFAULT_OVERLAP_FRAMES} between windows.", show_default=False)], None),
}


def extend(ctx: typer.Context, **flags: Any) -> None:
    """Continue a clip: the output is the clip followed by SECONDS of new video and speech.

    The clip's last frames and sound are encoded and held while the continuation is generated. The output
    is a new MP4 (default: CLIP_extended_SECONDSs.mp4 in the current folder); the clip is never changed.
    """
    name = f"{clip_stem(flags['clip'])}_extended_{flags['seconds']:g}s.mp4"
    from magihuman.pipeline.clip_requests import ExtendRequest

    run_edit(ctx, ExtendRequest, flags, tuple(_OWN), name)


command_signature(extend, _OWN)
