"""The Python API: the same report the CLI renders, for a training script or a notebook.

    from gradcheck_cli import analyze

    report = analyze("config.yaml")                 # or a dict shaped like the YAML
    assert report.ok, [f.message for f in report.findings]
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .analysis.analyze import analyze_spec, memory_trials
from .analysis.memory import check
from .io.resolve import load_spec, spec_from_data
from .results.report import Report
from .spec.schema import Spec
from .spec.yaml import apply_overrides


def analyze(config: str | os.PathLike[str] | Mapping[str, Any] | Spec, *,
            overrides: Sequence[str] = (), trials: int | None = None,
            clip_percentile: float = 10.0,
            base_dir: str | os.PathLike[str] | None = None,
            max_memory: int | None = None) -> Report:
    """Run BPTT on a spec and return its gradient-health report.

    Args:
        config: a spec file's path, a mapping shaped like the YAML file, or a loaded
            :class:`~gradcheck_cli.spec.Spec`.
        overrides: ``"key.path=value"`` strings, as ``--set`` takes them.
        trials: batches whose global gradient norms make the clip suggestion, the spec's
            own and ``trials - 1`` drawn independently (0: none; None, the default: 5 at a
            time, up to 20, until the suggestion's 95 % interval is within ±25 % of it, as
            ``gradcheck analyze`` does without ``--trials``).
        clip_percentile: the percentile of the sampled norms suggested as ``max_norm``.
        base_dir: where relative file paths in a mapping are resolved (default: the
            current directory; a file's paths are relative to its own folder).
        max_memory: bytes; a run estimated to need more (or more than the machine has
            available) is refused with a GradcheckError before anything is allocated.

    Returns:
        A :class:`~gradcheck_cli.report.Report`: ``report.ok`` is False when a finding of
        severity ``error`` was made; ``report.findings`` lists them all;
        ``report.to_json()`` is what ``gradcheck analyze --format json`` prints.

    Raises:
        GradcheckError: the spec or a file it names is invalid (a ``SpecError`` names the
            key, an ``InputFileError`` the file or tensor).
    """
    if trials is not None and trials < 0:
        raise ValueError("trials must be 0 or more")
    if not 0 < clip_percentile <= 100:
        raise ValueError("clip_percentile must be in (0, 100]")
    def guard(spec: Spec) -> None:            # before any file's values are read
        check(spec, max_memory=max_memory, trials=memory_trials(trials))

    if isinstance(config, Spec):
        spec = config
        guard(spec)
    elif isinstance(config, Mapping):
        data, origins = apply_overrides(copy.deepcopy(dict(config)), overrides)
        spec = spec_from_data(data, name="<dict>", origins=origins,
                              base_dir=Path(base_dir) if base_dir is not None else None,
                              guard=guard)
    else:
        spec = load_spec(Path(config), overrides, guard=guard)
    return analyze_spec(spec, trials=trials, clip_percentile=clip_percentile,
                        max_memory=max_memory)
