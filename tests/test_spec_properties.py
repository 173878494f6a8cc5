"""Property tests: whatever the spec holds, the loader answers with a Spec or a clean
GradcheckError, never another exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradcheck_cli.errors import GradcheckError
from gradcheck_cli.io.resolve import spec_from_data
from gradcheck_cli.spec.schema import Spec, spec_keys
from gradcheck_cli.spec.yaml import parse_yaml

KEYS = [key for key, _, _ in spec_keys()]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=True),
                    st.sampled_from(["lstm", "gru", "rnn", "relu", "tanh", "mse", "last",
                                     "all", "cross_entropy", "normal", "uniform", "orthogonal",
                                     "identity", "zeros", "float32", "x.npy", "", "1e-6"]),
                    st.text(max_size=5))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "file", "key",
                                                                  "scale"]), inner,
                                                 max_size=2)), max_leaves=4)


def _nest(assignments: dict[str, object]) -> dict:
    data: dict = {}
    for dotted, value in assignments.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return data


VALID = {"model.cell": "gru", "model.input_size": 2, "model.hidden_size": 3,
         "model.output_size": 2, "sequence.length": 4, "sequence.batch_size": 2}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*KEYS, "model.hiden_size", "extra"]), VALUES,
                       max_size=6))
def test_any_mutation_of_a_valid_spec_is_a_spec_or_a_clean_error(tmp_path_factory, changes):
    data = _nest({**VALID, **changes})
    try:
        spec = spec_from_data(data, name="s.yaml", base_dir=tmp_path_factory.getbasetemp())
    except GradcheckError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
    else:
        assert isinstance(spec, Spec) and spec.length >= 1 and spec.batch_size >= 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_clean_error(text):
    try:
        parse_yaml(text, "s.yaml")
    except GradcheckError as exc:
        assert str(exc).startswith("s.yaml")
