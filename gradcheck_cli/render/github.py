"""The report as GitHub Actions workflow commands: annotations that put each finding on the
line of the spec it is about, so that it shows on the pull request's diff.

One line per finding, ``::error`` or ``::warning`` by its severity, at the spec key it is
about (``findings[].spec_key``: the recurrent gain, the weights file, the sequence length),
or at the spec's first line when the spec sets none of its keys; a ``::notice`` for a
healthy report, and one per note. The file is the config as it was given (relative to the
working directory, as the runner wants it). Values are escaped as the runner reads them:
``%``, carriage return and newline in the message; also ``:`` and ``,`` in a property.
"""

from __future__ import annotations

from ..results.report import Report
from .common import healthy_text
from .options import RenderOptions

_MESSAGE = str.maketrans({"%": "%25", "\r": "%0D", "\n": "%0A"})
_PROPERTY = str.maketrans({"%": "%25", "\r": "%0D", "\n": "%0A", ":": "%3A", ",": "%2C"})


def command(name: str, message: str, **properties: str) -> str:
    """One workflow command, ``::name key=value,...::message``, each part escaped."""
    given = ",".join(f"{key}={value.translate(_PROPERTY)}" for key, value in properties.items())
    return f"::{name} {given}::{message.translate(_MESSAGE)}" if given else \
        f"::{name}::{message.translate(_MESSAGE)}"


def github(report: Report, options: RenderOptions) -> str:
    lines = []
    for finding in report.findings:
        about = f" ({finding.spec_key})" if finding.spec_key else ""
        lines.append(command(finding.severity, finding.message, file=report.config,
                             line=str(finding.spec_line or 1),
                             title=f"gradcheck {finding.code}{about}"))
    if not report.findings:
        lines.append(command("notice", f"healthy: {healthy_text(report)}", file=report.config,
                             line="1", title="gradcheck"))
    lines += [command("notice", note, file=report.config, line="1", title="gradcheck note")
              for note in report.notes]
    return "\n".join(lines) + "\n"
