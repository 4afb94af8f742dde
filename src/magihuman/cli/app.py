"""Command line: the ``magihuman`` app, its entry point, and how errors end a run (architecture.md §13.3).

The commands live in :mod:`magihuman.cli.generate` and :mod:`magihuman.cli.download`; their options
in :mod:`magihuman.cli.options`. This module turns every way a run can end into one exit code and at
most one line:

* 0 success;
* 2 bad input: an :class:`~magihuman.pipeline.validation.InputError` (also a missing file, a bad
  checkpoint) or a usage error of the parser (unknown option, value of the wrong type), as one
  ``error: ...`` line, before any model loads;
* 1 a failure while loading, generating, writing or downloading (``MAGIHUMAN_DEBUG=1`` shows the
  traceback);
* 130 interrupted (Ctrl-C), with the line ``interrupted``.

Option spellings of the reference entry script are accepted where they mean the same thing
(``--image_path``, ``--audio_path``, ``--br_width``, ``--br_height``, ``--output_path``,
``--save_path_prefix``, ``--sr_width``, ``--sr_height``). Unlike the reference, unknown options are errors.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from magihuman import __version__
from magihuman.cli.download import download
from magihuman.cli.enhance import enhance
from magihuman.cli.errors import Failure
from magihuman.cli.extend import extend
from magihuman.cli.generate import default_output_name, generate, read_text_file
from magihuman.cli.options import CHECKPOINT_ROOT_ENV, CONFIG_KEYS, GenerateOptions
from magihuman.cli.retake import retake
from magihuman.eval.cli import app as eval_app
from magihuman.pipeline.validation import InputError
from magihuman.serve.cli import serve
from magihuman.toy.cli import app as toy_app
from magihuman.train.cli import train_app
from magihuman.train.toy_cli import toy_ship, toy_train

__all__ = ["app", "main", "default_output_name", "read_text_file", "CONFIG_KEYS", "GenerateOptions"]

DEBUG_ENV = "MAGIHUMAN_DEBUG"
_ = CHECKPOINT_ROOT_ENV  # re-exported for tests and scripts: magihuman.cli.app.CHECKPOINT_ROOT_ENV


def _click_kind(exc: BaseException) -> set[str]:
    """Class names in ``exc``'s MRO: typer vendors its own click, so its exceptions are told apart by name."""
    return {cls.__name__ for cls in type(exc).__mro__}


class _OneLineErrors(TyperGroup):
    """The app's command group: every error ends as one line and an exit code (module docstring)."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        sys.exit(_exit_code(lambda: super(_OneLineErrors, self).main(
            args, prog_name, complete_var, standalone_mode=False, **extra)))

    def get_help_option(self, ctx: Any) -> Any:
        return _no_placeholder(super().get_help_option(ctx))


class _Command(TyperCommand):
    """A command whose ``--help`` is shown as a switch (no ``<bool>``)."""

    def get_help_option(self, ctx: Any) -> Any:
        return _no_placeholder(super().get_help_option(ctx))


def _no_placeholder(option: Any) -> Any:
    """``--help`` shown without a ``<bool>`` value placeholder."""
    if option is not None:
        option.metavar = ""
    return option


def _exit_code(run: Any) -> int:
    """Run the command line; map its outcome to an exit code, printing at most one line."""
    try:
        code = run()
    except InputError as exc:
        return _error(str(exc), 2)
    except FileNotFoundError as exc:  # a path the checks could not foresee
        return _error(str(exc), 2)
    except Failure as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        hint = f" (set {DEBUG_ENV}=1 for the traceback)" if exc.__cause__ is not None else ""
        return _error(f"{exc}{hint}", 1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line instead of a traceback
        kind = _click_kind(exc)
        if "NoArgsIsHelpError" in kind:
            exc.show()
            return 2
        if "ClickException" in kind:
            message = exc.format_message().replace("Value error, ", "").rstrip(".")
            command = getattr(getattr(exc, "ctx", None), "command_path", None) or "magihuman"
            return _error(f"{message}; see `{command} --help`", exc.exit_code)
        if "Abort" in kind:
            typer.echo("interrupted", err=True)
            return 130
        if os.environ.get(DEBUG_ENV):
            raise
        return _error(f"{type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)", 1)
    if code == 130:  # typer turns Ctrl-C into Exit(130)
        typer.echo("interrupted", err=True)
    return code if isinstance(code, int) else 0


def _error(message: str, code: int) -> int:
    typer.echo(f"error: {' '.join(message.splitlines())}", err=True)
    return code


app = typer.Typer(
    name="magihuman",
    cls=_OneLineErrors,
    help="daVinci-MagiHuman: text (+ first-frame image, + driving audio) to a talking-human MP4 with speech.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"magihuman {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """daVinci-MagiHuman: text (+ first-frame image, + driving audio) to a talking-human MP4 with speech."""


app.command("generate", cls=_Command, no_args_is_help=True)(generate)
app.command("extend", cls=_Command, no_args_is_help=True)(extend)  # issue 13: long clips, extend, retake
app.command("retake", cls=_Command, no_args_is_help=True)(retake)
app.command("download", cls=_Command)(download)
app.command("enhance", cls=_Command, no_args_is_help=True)(enhance)  # issue 13: docs/prompting.md
app.command("serve", cls=_Command)(serve)  # issue 10: magihuman.serve.cli
toy_app.command("train", cls=_Command)(toy_train)  # lives in train/: toy/ sits below the trainers
toy_app.command("ship", cls=_Command)(toy_ship)
app.add_typer(toy_app, name="toy")
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")


def main() -> None:
    """Console-script entry point (``magihuman``, ``python -m magihuman``).

    Every run ends through :func:`_fast_exit` with its exit code (0, 1, 2 or 130 as in the module
    docstring): the ``atexit`` handlers run and the standard streams are flushed, then the process ends
    without the interpreter's module teardown. With torch, diffusers and transformers imported that
    teardown alone takes about a second (docs/benchmarks.md), and a command that has returned has nothing
    left to save: outputs are written atomically before it returns, and a partial MP4 of an interrupted run
    is removed where it is written.
    """
    try:
        app(prog_name="magihuman")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit code 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    _fast_exit(code)


def _fast_exit(code: int) -> None:
    """End the process with ``code`` as a normal exit would, in its order: wait for the threads that are not
    daemons, run the ``atexit`` handlers (logging's flush, multiprocessing's worker cleanup, ``weakref.finalize``
    callbacks such as temporary folders), flush stdout and stderr; skips only the interpreter's teardown of the
    imported modules."""
    import atexit
    import threading

    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()  # noqa: SLF001 - the documented handlers, run as at a normal exit
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`magihuman ... | head`): nothing more to write
                pass
        os._exit(code)
