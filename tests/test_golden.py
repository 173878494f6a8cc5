"""Golden outputs: the renderers' text for hand-built results at a pinned width, byte for
byte. A change to a renderer shows here as a diff of what users will see.

After an intended change, regenerate the files and read their diff before committing:

    GRADCHECK_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradcheck_cli.commands.compare import Change, Comparison
from gradcheck_cli.render.formats import render
from gradcheck_cli.render.options import RenderOptions
from tests.reports import EXPLODING, VANISHING, make_report

GOLDEN = Path(__file__).parent / "golden"
WIDTH = RenderOptions(width=100)

CASES = {
    "report_healthy.txt": lambda: render(make_report(), "table", WIDTH),
    "report_findings.txt": lambda: render(make_report(findings=[EXPLODING, VANISHING]),
                                          "table", WIDTH),
    "report_long.txt": lambda: render(make_report(length=40, clip=False, cell="gru"),
                                      "table", WIDTH),
    "report_findings.md": lambda: render(make_report(findings=[EXPLODING]), "markdown",
                                         WIDTH),
    "report_healthy.json": lambda: render(make_report(), "json", WIDTH),
    "compare.txt": lambda: render(Comparison(
        baseline="old.json", new="new.json", tolerance=0.1,
        changes=[Change("layer 1 horizon", 120.0, 40.0, "worse",
                        "horizon 120 → 40 steps (-67%)"),
                 Change("loss", 0.9, 0.8, "better", "0.9 → 0.8")]), "table", WIDTH),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_is_the_golden_file(name):
    text = CASES[name]()
    path = GOLDEN / name
    if os.environ.get("GRADCHECK_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {name}: run with GRADCHECK_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def test_every_golden_file_has_its_case():
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(CASES)
