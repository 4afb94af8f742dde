"""``magihuman retake``: regenerate a time range of an existing clip, keeping the rest (docs/long_clips.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from magihuman.cli.clip_commands import clip_stem, command_signature, run_edit

__all__ = ["retake"]

_OWN = {
    "start": (Annotated[float, typer.Option("--start", help="Start of the range in seconds (>= 0).",
                                            show_default=False)], ...),
    "end": (Annotated[float, typer.Option("--end", help="End of the range in seconds (after --start, at most the "
                                          "clip's length).", show_default=False)], ...),
    "target": (Annotated[Literal["both", "video", "audio"], typer.Option(
        "--target", help="What to regenerate in the range: both (default), video (the sound is kept) or audio (the "
        "frames are kept).")], "both"),
    "video": (Annotated[bool, typer.Option("--video", metavar="", help="Same as --target video.")], False),
    "audio": (Annotated[bool, typer.Option("--audio", metavar="", help="Same as --target audio.")], False),
}


def retake(ctx: typer.Context, **flags: Any) -> None:
    """Regenerate [START, END) seconds of a clip; everything outside the range is kept.

    Outside the range the clip's latents are held exactly; video is regenerated in whole latent frames
    (4 frames). The output is a new MP4 (default: CLIP_retake_START-ENDs.mp4 in the current folder); the clip
    is never changed.
    """
    from magihuman.pipeline.clip_requests import RetakeRequest
    from magihuman.pipeline.validation import InputError

    video, audio = flags.pop("video"), flags.pop("audio")
    if video and audio:
        raise InputError("give --video or --audio (or --target both), not both", field="target")
    if video or audio:
        if flags["target"] != "both":
            raise InputError("give either --target or --video/--audio, not both", field="target")
        flags["target"] = "video" if video else "audio"
    name = f"{clip_stem(flags['clip'])}_retake_{flags['start']:g}-{flags['end']:g}s.mp4"
    run_edit(ctx, RetakeRequest, flags, ("start", "end", "target"), name)


command_signature(retake, _OWN)
