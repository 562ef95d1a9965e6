"""The paper's Table 2 ablation as DVC experiments: the eight LA-SE / TCN / Transformer combinations.

``queue`` runs ``dvc exp run --queue -n <name> -S model.lase=.. -S model.tcn=.. -S model.transformer=..`` for each
row (and ``dvc queue start -j N`` with ``start``); DVC re-uses the cached demo, prepare, split and extract outputs,
so only train, evaluate and predict run per row. ``report`` reads ``dvc exp show --json`` and prints the table with
the paper's value of each row beside ours (:mod:`pipeline.scoring.paper`).
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from typing import Any, TextIO

from pipeline.common.errors import PipelineError
from pipeline.common.provenance import RANDOM_INIT
from pipeline.scoring import paper

CV_FILE = "metrics/cv.json"
SWITCHES = ("lase", "tcn", "transformer")


def rows() -> list[tuple[bool, bool, bool]]:
    """The eight combinations in the paper's order: baseline (all off), one module (LA-SE, TCN, Transformer), two,
    then the full model."""
    return sorted(itertools.product((False, True), repeat=3), key=lambda c: (sum(c), [not on for on in c]))


def row_label(combo: tuple[bool, bool, bool]) -> str:
    """The paper's name of a row: ``baseline``, ``+LA-SE + TCN`` ..."""
    names = [n for n, on in zip(("LA-SE", "TCN", "Transformer"), combo) if on]
    return "+" + " + ".join(names) if names else "baseline"


def exp_name(combo: tuple[bool, bool, bool]) -> str:
    return "abl-" + "-".join(f"{s}{int(on)}" for s, on in zip(SWITCHES, combo))


def _dvc(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["dvc", *args], check=True, text=True, capture_output=True)
    except FileNotFoundError:
        raise PipelineError("dvc: command not found (activate the environment where dvc is installed)") from None
    except subprocess.CalledProcessError as e:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {(e.stderr or e.stdout).strip()}") from None


def queue(start: bool = False, jobs: int = 1) -> list[str]:
    """Queue the eight experiments; with ``start`` also start ``jobs`` queue workers. Returns the names."""
    names = []
    for combo in rows():
        name = exp_name(combo)
        sets = [a for s, on in zip(SWITCHES, combo) for a in ("-S", f"model.{s}={str(on).lower()}")]
        _dvc("exp", "run", "--queue", "-n", name, *sets)
        names.append(name)
        print(f"queued {name}: {' '.join(sets[1::2])}")
    if start:
        _dvc("queue", "start", "-j", str(jobs))
        print(f"started {jobs} queue worker(s); follow with `dvc queue status`, then `python -m pipeline ablation --report`")
    else:
        print("start them with `dvc queue start -j N`, then `python -m pipeline ablation --report`")
    return names


def _records(node: Any) -> Iterator[dict[str, Any]]:
    """Every experiment/commit record (a dict whose ``data`` holds ``params``) anywhere in ``dvc exp show --json``."""
    if isinstance(node, list):
        for x in node:
            yield from _records(x)
    elif isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and "params" in data:
            yield node
        for v in node.values():
            if isinstance(v, (list, dict)):
                yield from _records(v)


def _short(rev: str) -> str:
    """A commit hash cut to 7 characters; ``workspace`` and branch names as they are."""
    return rev[:7] if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev) else rev


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table(doc: Any) -> list[dict[str, Any]]:
    """One row per combination from parsed ``dvc exp show --json``: the newest record with those switches and a
    ``metrics/cv.json`` (experiments first, then the workspace and commits)."""
    found: dict[tuple[bool, bool, bool], dict[str, Any]] = {}
    for rec in _records(doc):
        data = rec["data"]
        model = _get(data, "params", "params.yaml", "data", "model") or {}
        cv = _get(data, "metrics", CV_FILE, "data")
        if not cv or not all(s in model for s in SWITCHES):
            continue
        combo = tuple(bool(model[s]) for s in SWITCHES)
        stamp = data.get("timestamp") or ""
        if combo in found and found[combo]["_stamp"] >= stamp:
            continue
        found[combo] = {
            "_stamp": stamp,
            "name": rec.get("name") or _short(str(rec.get("rev", ""))),
            "ccc_mean": _get(cv, "raw", "mean"),
            "ccc_valence": _get(cv, "raw", "valence"),
            "ccc_arousal": _get(cv, "raw", "arousal"),
            "ccc_mean_smoothed": _get(cv, "smoothed", "mean"),
            # DVC passes scalars only (cv.json's lists never reach it): the label string says random-init
            "random_init": str(cv.get("backbones", "")).startswith(RANDOM_INIT),
        }
    published = paper.table2()
    out = []
    for combo in rows():
        r = found.get(combo, {})
        out.append(
            {
                **dict(zip(SWITCHES, combo)),
                "name": r.get("name"),
                "ccc_mean": r.get("ccc_mean"),
                "ccc_valence": r.get("ccc_valence"),
                "ccc_arousal": r.get("ccc_arousal"),
                "ccc_mean_smoothed": r.get("ccc_mean_smoothed"),
                "random_init": r.get("random_init"),
                "paper": published.get(combo),
            }
        )
    return out


def format_table(table_rows: list[dict[str, Any]]) -> str:
    """Markdown table, one row per combination: our mean CCC beside the paper's, then our valence, arousal and
    smoothed mean, and the experiment the numbers come from."""

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    def mark(on: bool) -> str:
        return "✓" if on else "–"

    lines = [
        "| combination | LA-SE | TCN | Transformer | mean CCC (ours) | paper: mean CCC (Aff-Wild2) | valence | arousal "
        "| smoothed mean | experiment |",
        "|:--|:-:|:-:|:-:|--:|--:|--:|--:|--:|:--|",
    ]
    for r in table_rows:
        combo = (r["lase"], r["tcn"], r["transformer"])
        lines.append(
            f"| {row_label(combo)} | {mark(r['lase'])} | {mark(r['tcn'])} | {mark(r['transformer'])} | "
            f"{f(r['ccc_mean'])} | {f(r['paper'])} | {f(r['ccc_valence'])} | {f(r['ccc_arousal'])} | "
            f"{f(r['ccc_mean_smoothed'])} | {r['name'] or 'not run'} |"
        )
    lines.append("")
    lines.append(f"paper: {paper.citation()}, Table 2 ({paper.table2_note()}); shown here as fractions.")
    if any(r["random_init"] for r in table_rows):
        lines.append("Ours: features from random-init backbones: these numbers are not Aff-Wild2 numbers.")
    return "\n".join(lines)


def report(stream: TextIO) -> list[dict[str, Any]]:
    """Print the ablation table from ``dvc exp show --json`` to ``stream``."""
    doc = json.loads(_dvc("exp", "show", "--json").stdout or "[]")
    t = table(doc)
    stream.write(format_table(t) + "\n")
    return t
