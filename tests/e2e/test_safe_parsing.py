"""Every file read from a user is parsed safely: the package's source is searched (as Python syntax, so comments
and strings do not count) for the forms that can run code from a file or a file name."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "pipeline"


def _name(node: ast.AST) -> str:
    """Dotted name of a call target: ``torch.load``, ``yaml.load``, ``eval``; ``?`` stands for anything that is
    not a name (``model.to(dev).eval`` -> ``?.eval``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[str]:
    """``"<line>: <why>"`` for each unsafe form in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        last = name.rsplit(".", 1)[-1]
        why = None
        if name in ("eval", "exec", "compile", "__import__"):
            why = f"{name}() runs text as code"
        elif name.endswith("torch.load") and not _is_true(_kw(node, "weights_only")):
            why = "torch.load without weights_only=True unpickles arbitrary objects"
        elif name.startswith("yaml.") and last in ("load", "load_all", "unsafe_load", "full_load", "full_load_all"):
            why = f"{name}: use yaml.safe_load"
        elif name.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve", "joblib") and last.startswith("load"):
            why = f"{name} unpickles arbitrary objects"
        elif name.split(".")[0] in ("np", "numpy") and last == "load" and _is_true(_kw(node, "allow_pickle")):
            why = "numpy.load with allow_pickle=True unpickles arbitrary objects"
        elif name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            why = f"{name} runs a shell command line"
        elif name.startswith("subprocess.") and last in ("run", "Popen", "call", "check_call", "check_output"):
            if _is_true(_kw(node, "shell")):
                why = f"{name}(shell=True) runs a shell command line"
            elif node.args and not isinstance(node.args[0], (ast.List, ast.Tuple, ast.Name)):
                why = f"{name} with a command built as one string"
        if why:
            found.append(f"{node.lineno}: {why}")
    return found


def test_the_package_parses_user_files_safely():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = [f"{f.relative_to(PACKAGE.parent)}:{p}" for f in files for p in unsafe_calls(f.read_text())]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "snippet",
    [
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "x = yaml.load(text, Loader=yaml.Loader)",
        "yaml.unsafe_load(text)",
        "yaml.full_load(text)",
        "eval(line)",
        "exec(code)",
        "pickle.load(f)",
        "pickle.loads(b)",
        "np.load(path, allow_pickle=True)",
        "os.system('ffmpeg -i ' + name)",
        "subprocess.run(f'dvc exp run {name}', check=True)",
        "subprocess.run(cmd, shell=True)",
        "subprocess.Popen('ls ' + folder)",
    ],
)
def test_the_search_finds_each_unsafe_form(snippet):
    assert unsafe_calls(f"def f():\n    {snippet}\n"), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "torch.load(path, map_location='cpu', weights_only=True)",
        "yaml.safe_load(text)",
        "np.load(path)",
        "subprocess.run(['dvc', 'exp', 'show'], check=True)",
        "subprocess.run(cmd, cwd=root)",
        "model.eval()",
        "json.loads(text)",
        "pass  # torch.load(path) in a comment",
        "x = 'eval(1)'",
        "model.to(device).eval()",
    ],
)
def test_the_search_passes_the_safe_forms(snippet):
    assert not unsafe_calls(f"def f():\n    {snippet}\n"), snippet
