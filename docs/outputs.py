"""The captured outputs in README.md and docs/*.md, regenerated from the code.

Each captured block is preceded by a marker ``<!-- output: NAME -->``; NAME is a key of
:data:`BLOCKS` below, which says what ran and which of its lines are shown. From the
repository's root:

    python docs/outputs.py           # rewrite every page's blocks
    python docs/outputs.py --check   # exit 1 if any block differs from the code's

The test suite runs the check (tests/test_docs.py), so a captured block is always what the
code prints. Commands run in-process, at the width and without the colour a pipe gets, from
a scratch folder that holds the repository's sample configs and examples, so that the paths
they print are the ones a user types.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
"""The pages that may hold captured blocks."""
MARKER = re.compile(r"( *)<!-- output: (\S+) -->\n\1(```[a-z]*)\n(.*?)\1```\n", re.DOTALL)
"""A marker and the fenced block after it, indented alike (inside a list item, say)."""


ROUNDING = re.compile(r"\d\.\d+e-(?:09|[1-9]\d)(?:\s+(?:v|\[[\d,]+\])\s+\S+)?|─+| +")
"""Numbers of 1e-9 and below: in a gradient check they are rounding, and their digits move
with the BLAS's summation order (its thread count, the machine); so do which entry is the
worst (where it is, and its value there, after it) and the columns' widths."""


@dataclass(frozen=True)
class Block:
    """What a README block shows: ``commands`` run in turn, the last one's output (or
    every one's, with ``prompt``), cut by ``pick``; with ``prompt``, each command is shown
    as typed, after ``$ `` (``shown`` replaces how the last one is shown). Text matching
    ``volatile`` is not compared: a block that differs only there is left as it is."""

    commands: list[str]
    pick: Callable[[list[str]], list[str]] = field(default=lambda lines: lines)
    prompt: bool = False
    shown: str | None = None
    volatile: re.Pattern | None = None


def lines(first: int, last: int | None = None) -> Callable[[list[str]], list[str]]:
    """Lines first … last (1-based, inclusive; to the end without ``last``)."""
    return lambda out: out[first - 1:last]


def between(start: str, stop: str | None = None, *, extra: int = 0
            ) -> Callable[[list[str]], list[str]]:
    """From the first line starting with ``start`` to the line before the next one starting
    with ``stop`` (to the end without), ``extra`` lines beyond."""
    def pick(out: list[str]) -> list[str]:
        i = next(k for k, line in enumerate(out) if line.startswith(start))
        j = len(out) if stop is None else next(
            k for k in range(i + 1, len(out)) if out[k].startswith(stop))
        return out[i:min(len(out), j + extra)]
    return pick


def until(stop: str) -> Callable[[list[str]], list[str]]:
    """The lines before the first one starting with ``stop``, then ``...``."""
    def pick(out: list[str]) -> list[str]:
        end = next(k for k, line in enumerate(out) if line.startswith(stop))
        return [*out[:end], "..."]
    return pick


def cut(stop: str, resume: str, end: str) -> Callable[[list[str]], list[str]]:
    """The lines before ``stop``, ``...``, then from ``resume`` to the line before ``end``."""
    def pick(out: list[str]) -> list[str]:
        a = next(k for k, line in enumerate(out) if line.startswith(stop))
        b = next(k for k, line in enumerate(out) if line.startswith(resume))
        c = next(k for k in range(b, len(out)) if out[k].startswith(end))
        tail = out[b:c]
        while tail and not tail[-1].strip():
            tail.pop()
        return [*out[:a], "...", "", *tail]
    return pick


def elide(first: str, last: str) -> Callable[[list[str]], list[str]]:
    """The lines, those from the first one that reads ``first`` (indentation aside) to the
    next that reads ``last`` made one ``...`` (as indented)."""
    def pick(out: list[str]) -> list[str]:
        i = next(k for k, line in enumerate(out) if line.strip() == first)
        j = next(k for k in range(i, len(out)) if out[k].strip() == last)
        return [*out[:i], out[i][:len(out[i]) - len(out[i].lstrip())] + "...", *out[j + 1:]]
    return pick


def failing_case(out: list[str]) -> list[str]:
    """A JUnit document cut to its suite's head and its first failing test case, the rest
    (properties, the passing cases) made ``...``."""
    lines = elide("<properties>", "</properties>")(out)
    failing = next(k for k, line in enumerate(lines) if "<failure" in line)
    start = max(k for k in range(failing) if "<testcase" in lines[k])
    stop = next(k for k in range(failing, len(lines)) if "</testcase>" in lines[k])
    head = next(k for k, line in enumerate(lines) if line.strip() == "...")
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    return [*lines[:head + 1], *lines[start:stop + 1], indent + "...", *lines[-2:]]


SECONDS = re.compile(r'time="\d+\.\d+"')
"""A JUnit document's times: the machine's, not the model's."""


LSTM_HEALTHY = "sample_configs/lstm_healthy.yaml"
BLOCKS: dict[str, Block] = {
    "gru-exploding": Block(["gradcheck analyze sample_configs/gru_exploding.yaml"]),
    "readme-report": Block(["gradcheck analyze sample_configs/gru_exploding.yaml"],
                           cut("Per step", "Clipping", "Cost of BPTT")),
    "lstm-healthy-verdict": Block([f"gradcheck analyze {LSTM_HEALTHY}"],
                                  between("✓ healthy", "")),
    "verify": Block(["gradcheck verify sample_configs/rnn_healthy.yaml"], prompt=True,
                    volatile=ROUNDING),
    "tagger": Block(["gradcheck analyze docs/examples/tagger/tagger.yaml"], until("Per step")),
    "lm": Block(["gradcheck analyze docs/examples/lm/lm.yaml"], until("Per step")),
    "readme-truncation": Block(["gradcheck analyze sample_configs/lstm_vanishing.yaml "
                                "--windows search --trials 0"], between("Truncation:", "h = None"),
                               prompt=True),
    "compare": Block([f"gradcheck analyze {LSTM_HEALTHY} -f json -o baseline.json",
                      f"gradcheck analyze {LSTM_HEALTHY} -f json -o new.json --set "
                      "model.init.forget_bias=0 --fail-on never",
                      "gradcheck compare baseline.json new.json"], prompt=True,
                     shown="gradcheck compare baseline.json new.json        # exit status 1"),
    "residual-before": Block(["gradcheck analyze sample_configs/lstm_vanishing.yaml"],
                             between("Through time", "", extra=4)),
    "residual-after": Block(["gradcheck analyze sample_configs/lstm_vanishing.yaml --set "
                             "model.residual.time=true"], between("Through time", "", extra=4)),
    "truncate": Block([f"gradcheck analyze {LSTM_HEALTHY} --truncate 10 --trials 0"],
                      between("Clipping")),
    "truncation-search": Block(["gradcheck analyze sample_configs/lstm_vanishing.yaml "
                                "--windows search --trials 0"], between("Truncated BPTT")),
    "simulate": Block(["gradcheck simulate sample_configs/rnn_exploding.yaml --compare "
                       "none,clip-norm:0.906,autoclip:10,agc:0.01"], prompt=True),
    "deep-vanishing": Block(["gradcheck analyze sample_configs/lstm_vanishing.yaml --deep"],
                            between("Dynamics")),
    "deep-exploding": Block(["gradcheck analyze sample_configs/rnn_exploding.yaml --deep"],
                            between("Dynamics")),
    "sweep": Block(["gradcheck sweep sample_configs/lstm_healthy.yaml --vary "
                    "model.init.forget_bias=-1,0,1,2 --vary sequence.length=20,100 -j 2"],
                   prompt=True),
    "ci-github": Block(["gradcheck analyze sample_configs/gru_exploding.yaml "
                        f"{LSTM_HEALTHY} --trials 0 --format github"], prompt=True),
    "ci-junit": Block(["gradcheck analyze sample_configs/gru_exploding.yaml --trials 0 "
                       "--format junit"], failing_case,
                      prompt=True, volatile=SECONDS),
    "memory": Block([f"gradcheck analyze {LSTM_HEALTHY} --set sequence.length=100000000 "
                     "--max-memory 8G"], prompt=True),
}


def run(command: str) -> str:
    """What ``command`` prints, stdout then stderr, as a pipe would get it."""
    from click.testing import CliRunner

    from gradcheck_cli.cli import cli
    args = shlex.split(command)
    assert args[0] == "gradcheck", command
    result = CliRunner().invoke(cli, args[1:], prog_name="gradcheck")
    return result.stdout + result.stderr


def render(block: Block) -> str:
    """The block's text, from commands run in a scratch folder."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "sample_configs").symlink_to(ROOT / "sample_configs")
        (Path(scratch) / "docs").symlink_to(ROOT / "docs")
        os.chdir(scratch)
        try:
            shown = []
            for i, command in enumerate(block.commands):
                out = run(command)
                last = i == len(block.commands) - 1
                if block.prompt:
                    typed = block.shown if last and block.shown else command
                    shown.append(f"$ {typed}")
                if last:
                    shown += block.pick(out.rstrip("\n").split("\n"))
        finally:
            os.chdir(here)
    return "\n".join(line.rstrip() for line in shown) + "\n"


def update(text: str) -> str:
    """A page's text with every marked block regenerated."""
    def replace(match: re.Match) -> str:
        indent, name, fence = match.group(1), match.group(2), match.group(3)
        if name not in BLOCKS:
            raise KeyError(f"a page marks an unknown block {name!r}")
        block = BLOCKS[name]
        body = "".join(f"{indent}{line}".rstrip() + "\n"
                       for line in render(block).splitlines())
        if block.volatile is not None and \
                block.volatile.sub("…", body) == block.volatile.sub("…", match.group(4)):
            body = match.group(4)                  # the same, but for rounding
        return f"{indent}<!-- output: {name} -->\n{indent}{fence}\n{body}{indent}```\n"
    return MARKER.sub(replace, text)


def marked(text: str) -> list[str]:
    """The names of the blocks ``text`` marks, in order."""
    return [m.group(2) for m in MARKER.finditer(text)]


def main() -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = update(text)
        if new != text:
            stale.append(page.relative_to(ROOT))
            if "--check" not in sys.argv[1:]:
                page.write_text(new)
    if stale and "--check" in sys.argv[1:]:
        print(f"{', '.join(map(str, stale))}: captured outputs differ from the code's; run "
              "python docs/outputs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
