"""Docs that run: every Python block of README.md and docs/ runs, every relative link resolves, every shell block
says which test runs it or why none does, every ``--flag`` a shell block names exists in its command's --help, and
every ``--flag`` in the prose is an option of some command.

Python blocks run with Sybil, one namespace per page (a page's blocks continue each other), in a temporary
folder. A shell block is marked on the line above it with ``<!-- shell: run by tests/FILE.py::TEST -->`` (the
test must exist) or ``<!-- shell: not run: REASON -->``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

PAGES = sorted(
    [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"), REPO_ROOT / "tests" / "fixtures" / "README.md"]
)
SLOW_PAGES = {"docs/training.md"}  # its blocks train (ENet at 32x32: a minute of compilation on a small CPU)
FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!-- shell: (run by (?P<file>tests/[\w/]+\.py)::(?P<test>\w+)|not run: .+) -->")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SHELLS = {"bash", "sh", "shell", "console"}
#: the module whose ``main(argv, prog)`` parses each command's options
COMMANDS = {
    **{f"experiments.{name}": f"segmime_jax.commands.{name}" for name in ("acdc", "promise12", "gradients")},
    **{f"experiments.{name}": f"segmime_jax.commands.{name}" for name in ("benchmark", "device_check", "mime_study")},
    **{
        f"segmime-{name.replace('_', '-')}": f"segmime_jax.commands.{name}"
        for name in ("acdc", "promise12", "gradients", "benchmark", "device_check", "mime_study")
    },
    "make acdc": "segmime_jax.commands.acdc",
    "make promise12": "segmime_jax.commands.promise12",
    "make gradients": "segmime_jax.commands.gradients",
    "make benchmark": "segmime_jax.commands.benchmark",
    "make device-check": "segmime_jax.commands.device_check",
    "segmime_jax.data.synthetic": "segmime_jax.data.synthetic.cli",
}
#: flags the docs name in prose that belong to other tools (gcloud's), or stand for any flag
OTHER_TOOLS_FLAGS = {"--worker", "--command", "--flag"}


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def params(pages=PAGES, slow=()):
    return [
        pytest.param(path, id=page_id(path), marks=[pytest.mark.slow] if page_id(path) in slow else [])
        for path in pages
    ]


@pytest.mark.parametrize("path", params(slow=SLOW_PAGES))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    document = Sybil(parsers=[PythonCodeBlockParser()]).parse(path)
    for example in document.examples():
        example.evaluate()


def shell_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, text, marker or None)`` of each shell block of ``path``."""
    text = path.read_text()
    blocks = []
    for fence in FENCE.finditer(text):
        if fence.group(1) not in SHELLS:
            continue
        before = [line for line in text[: fence.start()].splitlines() if line.strip()]
        marker = before[-1].strip() if before and before[-1].strip().startswith("<!-- shell:") else None
        blocks.append((text[: fence.start()].count("\n") + 1, fence.group(2), marker))
    return blocks


@pytest.mark.parametrize("path", params())
def test_shell_blocks_say_which_test_runs_them_or_why_none_does(path):
    for line, _, marker in shell_blocks(path):
        assert marker is not None, f"{page_id(path)}:{line}: a shell block without a <!-- shell: ... --> line above it"
        found = MARKER.fullmatch(marker)
        assert found, f"{page_id(path)}:{line}: malformed marker {marker!r}"
        if found.group("file"):
            test_file = REPO_ROOT / found.group("file")
            assert test_file.is_file(), f"{page_id(path)}:{line}: no {found.group('file')}"
            assert f"def {found.group('test')}(" in test_file.read_text(), f"{page_id(path)}:{line}: no such test"


def help_text(module: str) -> str:
    out = io.StringIO()
    main = importlib.import_module(module).main
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"], prog="command") if "prog" in main.__code__.co_varnames else main(["--help"])
    return out.getvalue()


def commands_in(block: str) -> list[tuple[str, str]]:
    """``(module, arguments)`` of every known command in a shell block (continued lines joined)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0]
        for name, module in COMMANDS.items():
            for match in re.finditer(rf"(?:python -m |\b){re.escape(name)}(?=\s|$)(?P<args>[^;&|]*)", line):
                found.append((module, match.group("args")))
    return found


@pytest.mark.parametrize("path", params())
def test_flags_in_shell_blocks_exist(path):
    helps: dict[str, str] = {}
    for line, block, _ in shell_blocks(path):
        for module, arguments in commands_in(block):
            helps.setdefault(module, help_text(module))
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", arguments):
                assert flag in helps[module], f"{page_id(path)}:{line}: {flag} is not an option of {module}"


@pytest.mark.parametrize("path", params())
def test_flags_in_prose_exist(path):
    """A ``--flag`` in an inline code span is an option of one of the commands (or of a tool named above)."""
    everything = " ".join(help_text(module) for module in sorted(set(COMMANDS.values())))
    for span in re.findall(r"`([^`]*)`", FENCE.sub("", path.read_text())):
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w=]*_)", span):  # not XLA's --xla_... flags
            assert flag in everything or flag in OTHER_TOOLS_FLAGS, f"{page_id(path)}: {flag} is no command's option"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", params())
def test_relative_links_resolve(path):
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve()
        assert resolved.exists(), f"{page_id(path)}: the link {target} leads nowhere"
        if anchor:
            assert anchor in anchors(resolved), f"{page_id(path)}: no heading #{anchor} in {file}"


def test_the_commands_are_recognised():
    """The flag check above sees the commands as the docs write them."""
    block = 'python -m experiments.acdc --seeds 3 \\\n  --epochs 2  # comment --nope\nmake promise12 ARGS="--x"'
    assert [(module, arguments.split()) for module, arguments in commands_in(block)] == [
        ("segmime_jax.commands.acdc", ["--seeds", "3", "--epochs", "2"]),
        ("segmime_jax.commands.promise12", ['ARGS="--x"']),
    ]
    assert "--adam-b1" in help_text("segmime_jax.commands.acdc")
