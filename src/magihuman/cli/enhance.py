"""``magihuman enhance`` and the ``--enhance`` step of ``magihuman generate`` (docs/prompting.md).

``magihuman enhance "IDEA"`` prints the enhanced prompt on stdout and any warning on stderr; when the
enhancer fails it prints the idea unchanged and exits with code 1. ``generate --enhance`` rewrites the prompt
after every input is checked and before any video model loads, prints it, and after the MP4 is written saves
it beside it as ``<output stem>.prompt.txt`` (atomically; an existing file is replaced only with
``--overwrite``, and its presence is checked with the other inputs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from magihuman.cli.errors import Failure
from magihuman.cli.generate import read_text_file
from magihuman.pipeline.errors import InputError
from magihuman.prompting.backends import (
    API_KEY_ENV,
    DEFAULT_TIMEOUT,
    MODEL_ENV,
    TIMEOUT_ENV,
    URL_ENV,
    EnhancerConfigError,
    backend_from_settings,
)

__all__ = ["enhance", "make_backend", "enhance_job", "prompt_file_path", "check_prompt_file", "save_prompt_file",
           "write_enhanced_prompt", "PROMPT_SUFFIX"]

#: Suffix of the saved enhanced prompt: ``clip.mp4`` -> ``clip.prompt.txt``.
PROMPT_SUFFIX = ".prompt.txt"


def make_backend(**settings: Any):
    """:func:`~magihuman.prompting.backends.backend_from_settings`, its configuration errors as ``InputError``."""
    try:
        return backend_from_settings(**settings)
    except EnhancerConfigError as exc:
        raise InputError(str(exc), field=exc.field) from None


def enhance(
    prompt: Annotated[str | None, typer.Argument(help="The idea for the clip, e.g. 'a man in a yellow shirt says "
                                                      "hello'.", show_default=False)] = None,
    prompt_file: Annotated[Path | None, typer.Option("--prompt-file", help="Read the idea from a UTF-8 file "
                                                     "instead.", show_default=False)] = None,
    url: Annotated[str | None, typer.Option("--url", help=f"OpenAI-compatible endpoint (base or full "
                                            f"/v1/chat/completions URL). Default: ${URL_ENV}.",
                                            show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", help=f"Model name at --url. Default: ${MODEL_ENV}.",
                                              show_default=False)] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help=f"Bearer key for --url. Prefer ${API_KEY_ENV} "
                                                "(or $OPENAI_API_KEY): a flag shows in the process list.",
                                                show_default=False)] = None,
    local_model: Annotated[str | None, typer.Option("--local-model", help="A transformers causal LM (Hugging Face "
                                                    "id or folder) instead of an endpoint.",
                                                    show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help=f"Seconds to wait for the endpoint. Default: "
                                                  f"${TIMEOUT_ENV} or {DEFAULT_TIMEOUT:g}.",
                                                  show_default=False)] = None,
    with_image: Annotated[bool, typer.Option("--with-image", help="The clip starts from a first-frame image: "
                                             "the enhancer invents no looks.", metavar="")] = False,
) -> None:
    """Rewrite a short idea into the 150-200-word three-part prompt the model was tuned on.

    Prints the enhanced prompt on stdout, warnings on stderr. If the enhancer fails: the idea unchanged, exit 1.
    """
    from magihuman.prompting.enhancer import enhance_prompt

    if (prompt is None) == (prompt_file is None):
        raise InputError("give the idea either as an argument or with --prompt-file (one of them)", field="prompt")
    text = read_text_file(prompt_file) if prompt_file is not None else prompt
    if not text.strip():
        raise InputError("the idea is empty; describe the clip", field="prompt")
    backend = make_backend(url=url, model=model, api_key=api_key, local_model=local_model, timeout=timeout)
    try:
        result = enhance_prompt(text, backend, has_image=with_image)
    finally:
        backend.close()
    if result.warning:
        typer.echo(f"warning: {result.warning}", err=True)
    typer.echo(result.prompt)
    if not result.enhanced:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ generate --enhance
def prompt_file_path(output: Path) -> Path:
    """Where ``generate --enhance`` saves the prompt: ``clip.mp4`` -> ``clip.prompt.txt``."""
    return output.with_name(output.stem + PROMPT_SUFFIX)


def check_prompt_file(output: Path, *, overwrite: bool) -> Path:
    """The prompt file's path, refused if it exists and ``overwrite`` is False (before any model loads)."""
    path = prompt_file_path(output)
    if path.exists() and not overwrite:
        raise InputError(f"prompt file already exists: {path}; pass --overwrite to replace it or choose another "
                         "--output", field="output")
    return path


def save_prompt_file(path: Path, text: str, *, overwrite: bool) -> Path:
    """Write ``text`` (UTF-8, one final newline) atomically: a temp file beside ``path``, then a rename.

    Without ``overwrite`` the last step is a hard link, which fails if ``path`` appeared meanwhile.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        OSError: the folder is not writable.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text.rstrip("\n") + "\n")
        if overwrite:
            os.replace(tmp, path)
        else:
            _link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _link(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)  # atomic, and fails if the file appeared meanwhile
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: best effort
        if path.exists():
            raise FileExistsError(f"{path} appeared meanwhile; it was left as it is") from None
        os.replace(tmp, path)


def enhance_job(job: Any) -> Any:
    """Enhance ``job.request.prompt`` when ``job.enhancer`` is set; prints the result and any warning.

    On success ``job.request`` gets the enhanced prompt and ``job.enhanced_prompt`` holds it; on failure
    both stay as they were (the warning says why). The backend is closed afterwards (a local model's memory
    is freed before the video models load).
    """
    if job.enhancer is None:
        return job
    from magihuman.prompting.enhancer import enhance_prompt

    typer.echo(f"enhancing the prompt with {job.enhancer.description}", err=True)
    try:
        result = enhance_prompt(job.request.prompt, job.enhancer, has_image=job.request.image is not None)
    finally:
        job.enhancer.close()
    if result.warning:
        typer.echo(f"warning: {result.warning}", err=True)
    if result.enhanced:
        typer.echo(f"enhanced prompt (saved as {prompt_file_path(job.output)} with the video):\n{result.prompt}\n",
                   err=True)
        job.request = job.request.model_copy(update={"prompt": result.prompt})
        job.enhanced_prompt = result.prompt
    return job


def write_enhanced_prompt(job: Any) -> Path | None:
    """After the MP4: save ``job.enhanced_prompt`` beside it (None when there is none).

    Raises:
        Failure: the file could not be written.
    """
    if job.enhanced_prompt is None:
        return None
    path = prompt_file_path(job.output)
    try:
        return save_prompt_file(path, job.enhanced_prompt, overwrite=job.options.overwrite)
    except OSError as exc:
        raise Failure(f"could not write {path}: {exc}") from exc
