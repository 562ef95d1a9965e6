"""The command line in the test's own process: ``invoke`` runs ``python -m pipeline ARGS`` through typer's runner,
``write_params`` writes a params file for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

from pipeline.cli import app


def invoke(*args: str | Path) -> Result:
    """``python -m pipeline ARGS``: the result carries ``exit_code`` and ``output`` (stdout and stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def write_params(path: Path, sections: dict[str, Any], base: Path | None = None) -> Path:
    """A params file at ``path``: the sections of ``base`` (a params file; default none) with each section of
    ``sections`` merged over its namesake key by key."""
    params = yaml.safe_load(Path(base).read_text()) if base is not None else {}
    for name, values in sections.items():
        params[name] = {**(params.get(name) or {}), **values}
    path.write_text(yaml.safe_dump(params))
    return path
