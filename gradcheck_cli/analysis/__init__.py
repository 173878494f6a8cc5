"""Analysis: from a spec's gradients to measurements, verdicts, clip values, dynamics and
costs (``analyze.analyze_spec`` runs them all)."""
