"""The docs are part of the feature: they must say what the code does."""

from __future__ import annotations

import re

from gradcheck_cli import __version__
from gradcheck_cli.cli import cli
from gradcheck_cli.spec.schema import spec_keys
from tests.conftest import ROOT, SAMPLES

README = (ROOT / "README.md").read_text()


def test_readme_documents_every_spec_key():
    missing = [key for key, _, _ in spec_keys() if f"`{key}`" not in README]
    assert not missing


def test_readme_documents_every_command():
    assert all(f"gradcheck {name}" in README for name in cli.commands)


def test_readme_names_every_sample_config():
    assert all(f"`{p.name}`" in README for p in SAMPLES)
    named = set(re.findall(r"`(\w+_(?:healthy|exploding|vanishing)\.yaml)`", README))
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


def test_readme_outputs_are_what_the_code_prints():
    """Every captured block marked in README is regenerated and compared (see
    docs/readme_outputs.py); a block that no longer reproduces fails here."""
    import sys
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import readme_outputs
    finally:
        sys.path.pop(0)
    names = readme_outputs.marked(README)
    assert sorted(names) == sorted(readme_outputs.BLOCKS)
    regenerated = readme_outputs.update(README)
    if regenerated != README:
        import difflib
        diff = "".join(list(difflib.unified_diff(README.splitlines(True),
                                                 regenerated.splitlines(True)))[:60])
        raise AssertionError("README's captured outputs differ from the code's; run python "
                             f"docs/readme_outputs.py\n{diff}")


def test_every_test_the_safety_section_cites_exists():
    """README's "Safe to run unattended" names the test holding each guarantee."""
    section = README.split("## Safe to run unattended", 1)[1].split("\n## ", 1)[0]
    cited = set(re.findall(r"`(test_\w+)`", section))
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
