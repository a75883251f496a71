"""Model types that carry labels (`onnx|rt:x`): the split between the format
the runtime loads and the labels an instance must have."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.type_constraints import TypeConstraints, runtime_model_type, split_model_type

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=12)
labels = st.builds(lambda prefix, name: prefix + name, st.sampled_from(["rt:", "mt:", "pv:"]), names)


@given(fmt=names.filter(lambda n: not n.startswith(("rt:", "mt:", "pv:"))), extra=st.lists(labels, max_size=4))
def test_the_plain_part_is_the_format_and_labels_are_required(fmt, extra):
    model_type = "|".join([*extra[:1], fmt, *extra[1:]])
    assert split_model_type(model_type) == (fmt, frozenset(extra))
    assert TypeConstraints().labels_for(model_type) == frozenset(extra)


def test_the_format_comes_from_an_mt_label_when_there_is_no_plain_part():
    assert runtime_model_type("mt:onnx:1|pv:grpc-v2") == "onnx"
    assert runtime_model_type("rt:triton-2.x") == "rt:triton-2.x"  # nothing better to ask for
    assert runtime_model_type("onnx") == "onnx"


def test_configured_constraints_combine_with_the_types_own_labels():
    constraints = TypeConstraints.parse('{"onnx": {"required": ["gpu"]}, "_default": {"required": ["cpu"]}, "x|rt:a": {"required": ["z"]}}')
    assert constraints.labels_for("onnx|rt:a") == {"gpu", "rt:a"}
    assert constraints.labels_for("sklearn|rt:a") == {"cpu", "rt:a"}
    assert constraints.labels_for("x|rt:a") == {"z"}  # an entry for the whole type wins
    assert constraints.labels_for("onnx") == {"gpu"}
