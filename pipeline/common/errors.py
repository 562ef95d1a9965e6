"""Errors a user can fix: the CLI prints their message on one line, without a traceback, and exits 2
(:func:`user_errors`, the decorator of every command)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class PipelineError(Exception):
    """Base of every error whose message names the file (and line or key) and the problem."""


class InputError(PipelineError):
    """Bad input data: a missing dataset root, a malformed annotation, an undecodable video."""


def user_errors(fn: F) -> F:
    """Turn a :class:`PipelineError` raised by the command ``fn`` into ``error: <message>`` on stderr and exit status
    2; anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as e:
            import typer

            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
