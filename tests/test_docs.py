"""The docs are part of the feature: they must say what the code does."""

from __future__ import annotations

import re

from gradcheck_cli import __version__
from gradcheck_cli.cli import cli
from gradcheck_cli.spec.schema import spec_keys
from tests.conftest import ROOT, SAMPLES

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
PAGES = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]}


def _tool(name: str):
    """A script of docs/ as a module."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                 # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_readme_fits_on_a_few_screens_and_links_the_reference():
    assert len(README.splitlines()) < 260     # with CI's workflows and their outputs
    for page in ("guide.md", "spec.md", "report.md", "safety.md", "performance.md",
                 "maths.md", "development.md"):
        assert f"(docs/{page}" in README, page


def test_every_link_between_pages_resolves():
    """Each relative link names a page that exists, and each #anchor a heading on it."""
    def anchors(text: str) -> set[str]:
        return {re.sub(r"[^\w\- ]", "", h.strip("# ").lower()).replace(" ", "-")
                for h in re.findall(r"(?m)^#+ .*$", text)}
    broken = []
    for name, text in PAGES.items():
        here = ROOT if name == "README.md" else DOCS
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            page = (here / path).resolve() if path else (here / name)
            missing = path and not page.exists()
            if missing or (anchor and page.suffix == ".md"
                           and anchor not in anchors(page.read_text())):
                broken.append(f"{name}: {target}")
    assert broken == []


def test_the_reference_tables_are_the_codes():
    """docs/spec.md's key table and docs/report.md's field table are generated from the
    spec's dataclasses and the report's schema (docs/reference.py); none is stale."""
    reference = _tool("reference")
    for name, (path, make) in reference.TABLES.items():
        text = path.read_text()
        assert reference.update(text, name, make()) == text, "run python docs/reference.py"
    missing = [key for key, _, _ in spec_keys() if f"`{key}`" not in PAGES["spec.md"]]
    assert not missing


def test_the_guide_documents_every_command():
    assert all(f"gradcheck {name}" in README for name in cli.commands)
    assert all(f"gradcheck {name}" in PAGES["guide.md"] for name in cli.commands)


def test_the_guide_names_every_sample_config():
    guide = PAGES["guide.md"]
    named = set(re.findall(r"`(\w+_(?:healthy|exploding|vanishing)\.yaml)`", guide))
    assert named == {p.name for p in SAMPLES}


def test_ci_runs_exactly_the_readme_test_command():
    command = 'pip install ".[test]" && python -m pytest -q'
    assert f"```bash\n{command}\n```" in README
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_changelog_has_an_unreleased_section():
    assert "\n## Unreleased\n" in (ROOT / "CHANGELOG.md").read_text()


def test_version_is_single_sourced():
    assert "version = attr: gradcheck_cli.__version__" in (ROOT / "setup.cfg").read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_captured_outputs_are_what_the_code_prints():
    """Every captured block marked in README or docs/ is regenerated and compared (see
    docs/outputs.py); a block that no longer reproduces fails here."""
    import sys
    sys.path.insert(0, str(ROOT))
    outputs = _tool("outputs")
    used = {name for text in PAGES.values() for name in outputs.marked(text)}
    assert used == set(outputs.BLOCKS)
    for page, text in PAGES.items():
        regenerated = outputs.update(text)
        if regenerated != text:
            import difflib
            diff = "".join(list(difflib.unified_diff(text.splitlines(True),
                                                     regenerated.splitlines(True)))[:60])
            raise AssertionError(f"{page}'s captured outputs differ from the code's; run "
                                 f"python docs/outputs.py\n{diff}")


def test_every_test_the_safety_page_cites_exists():
    """docs/safety.md names the test holding each guarantee."""
    cited = set(re.findall(r"`(test_\w+)`", PAGES["safety.md"]))
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert cited and all(f"def {name}(" in tests for name in cited), \
        sorted(n for n in cited if f"def {n}(" not in tests)


def test_the_same_json_check_finds_a_difference():
    """benchmarks/same_json.py is how a refactor shows it changed no number: its comparison
    must see a change at 1e-10 and let one at 1e-14 through."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("same_json", ROOT / "benchmarks" /
                                                  "same_json.py")
    same_json = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(same_json)
    old = {"gradcheck_version": "1", "a": [1.0, {"b": 2.0, "c": None}], "ok": True}
    assert same_json.differences(old, old, 1e-12) == []
    assert same_json.differences(old, {**old, "gradcheck_version": "2"}, 1e-12) == []
    assert same_json.differences(old, {**old, "a": [1.0 + 1e-14, {"b": 2.0, "c": None}]},
                                 1e-12) == []
    assert same_json.differences(old, {**old, "a": [1.0 + 1e-10, {"b": 2.0, "c": None}]},
                                 1e-12) == [".a[0]: 1.0 != 1.0000000001"]
    assert same_json.differences(old, {**old, "a": [1.0, {"b": 2.0, "c": 0.0}]}, 1e-12)
    assert same_json.differences(old, {**old, "ok": 1}, 1e-12)
    assert same_json.differences(old, {**old, "a": [1.0]}, 1e-12) == [".a: 2 items != 1"]
    assert same_json.differences(old, {"a": old["a"], "ok": True}, 1e-12) == []
    assert same_json.differences(old, {"ok": True}, 1e-12) == [".a: only in old"]
