"""Charts (matplotlib, the plot extra) and the HTML page."""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from typing import ClassVar

import pytest

from tests.conftest import SAMPLE, run

PNG = b"\x89PNG\r\n\x1a\n"



@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_report_chart(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"chart{suffix}"
    result = run("analyze", SAMPLE["lstm_vanishing"], "--deep", "--plot", path, "--trials", "0")
    assert result.exit_code == 0, result.output
    data = path.read_bytes()
    assert data.startswith(PNG) if suffix == ".png" else b"<svg" in data
    if suffix == ".svg":
        text = data.decode()
        assert "Lyapunov spectrum" in text and "vanishing" in text


@pytest.mark.parametrize("varies", [["model.init.forget_bias=0,1,2"],
                                    ["model.init.forget_bias=0,1", "sequence.length=10,30"]])
def test_sweep_chart(tmp_path, varies):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.svg"
    args = [a for v in varies for a in ("--vary", v)]
    result = run("sweep", SAMPLE["lstm_healthy"], *args, "--plot", path)
    assert result.exit_code == 0, result.output
    assert "growth factor" in path.read_text()


def test_missing_matplotlib_is_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run("analyze", SAMPLE["lstm_healthy"], "--plot", tmp_path / "c.png")
    assert result.exit_code == 2
    assert "pip install 'gradcheck[plot]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c.png").exists()
    page = run("analyze", SAMPLE["lstm_healthy"], "-f", "html", "--trials", "0")
    assert page.exit_code == 0 and "No chart: charts need matplotlib" in page.stdout


def test_plot_needs_a_known_suffix(tmp_path):
    result = run("analyze", SAMPLE["lstm_healthy"], "--plot", tmp_path / "c.pdf")
    assert result.exit_code == 2 and "writes .png or .svg" in result.stderr


class _Checker(HTMLParser):
    VOID: ClassVar[set[str]] = {"meta", "br", "img", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.problems, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        self.external += [v for k, v in attrs if k in ("src", "href") and v and
                          v.startswith("http")]

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while self.stack and self.stack[-1] != tag:
            self.stack.pop()  # SVG's own elements close implicitly in places
        if not self.stack:
            self.problems.append(tag)
        else:
            self.stack.pop()


def test_html_page_is_self_contained():
    pytest.importorskip("matplotlib")
    result = run("analyze", SAMPLE["gru_exploding"], "--deep", "-f", "html", "--trials", "3",
                 "--fail-on", "never")
    assert result.exit_code == 0
    page = result.stdout
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<svg" in page and "exploding" in page and "clip_grad_norm_" in page
    checker = _Checker()
    checker.feed(page)
    assert checker.problems == [] and checker.external == []
