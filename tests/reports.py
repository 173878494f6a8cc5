"""Hand-built reports for testing renderers without running BPTT."""

from __future__ import annotations

from gradcheck_cli.results.report import (
    ClipCandidate,
    ClipSuggestion,
    Finding,
    LayerStats,
    ModelSummary,
    ParameterStats,
    Report,
)


def make_report(length: int = 5, findings: list[Finding] | None = None, cell: str = "lstm",
                clip: bool = True, layers: int = 2) -> Report:
    norms = [0.5 * 0.8 ** (length - 1 - t) for t in range(length)]
    return Report(
        gradcheck_version="9.9.9",
        config="specs/model.yaml",
        dtype="float64",
        model=ModelSummary(cell=cell, nonlinearity=None, input_size=3, hidden_size=4,
                           num_layers=layers, output_size=2, head=True, parameter_count=123,
                           weights=None),
        length=length, batch_size=2, loss_kind="mse", loss_timesteps="all",
        thresholds={"vanishing": 1e-6, "exploding": 100.0},
        loss=0.75, global_grad_norm=1.25,
        parameters=[ParameterStats(name="rnn.weight_hh_l0", shape=[16, 4], grad_norm=0.3,
                                   grad_max_abs=0.1, weight_norm=2.0),
                    ParameterStats(name="head.bias", shape=[2], grad_norm=float("inf"),
                                   grad_max_abs=float("nan"), weight_norm=0.5)],
        layers=[LayerStats(index=k, hidden_grad_norm=[1.0 + t for t in range(length)],
                           cell_grad_norm=[2.0] * length if cell == "lstm" else None,
                           last_step_grad_norm=norms, growth_factor=0.8,
                           ratio=norms[0] / norms[-1], horizon=61.9)
                for k in range(layers)],
        findings=findings or [],
        notes=["weights from w.npz: a note"],
        clip=ClipSuggestion(trials=8, percentile=10.0, max_norm=0.42,
                            norm_percentiles={"p10": 0.42, "p25": 0.5, "p50": 0.6, "p75": 0.7,
                                              "p90": 0.8, "p99": 0.9, "min": 0.4, "max": 0.95},
                            candidates=[ClipCandidate(0.42, "p10 (suggested)", 0.875),
                                        ClipCandidate(1.0, "conventional", 0.0)],
                            basis="autoclip", autoclip=0.42)
        if clip else None,
    )


EXPLODING = Finding(code="exploding", severity="error", layer=1,
                    message="layer 1: the gradient grows 1e+04× going back",
                    values={"ratio": 1e4, "growth_factor": 1.2, "horizon": 25.3})
VANISHING = Finding(code="vanishing", severity="warning", layer=0,
                    message="layer 0: the gradient shrinks to 1e-09",
                    values={"ratio": 1e-9, "growth_factor": 0.5, "horizon": 20.0})
