"""Reading InferenceServices as ModelMesh's controller does, and the
concrete model ids that turn spec edits into vModel transitions."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.controller.predictor import (
    InvalidSpec,
    is_modelmesh,
    predictor_from_isvc,
    vmodel_of,
)


def isvc(predictor: dict, annotations: dict | None = None, name: str = "example-sklearn-isvc") -> dict:
    notes = {"serving.kserve.io/deploymentMode": "ModelMesh", **(annotations or {})}
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "modelmesh-serving", "annotations": notes},
        "spec": {"predictor": predictor},
    }


# KServe's documented ModelMesh examples, unchanged
DOC_STORAGE = isvc({"model": {"modelFormat": {"name": "sklearn"}, "storage": {"key": "localMinIO", "path": "sklearn/mnist-svm.joblib"}}})
DOC_URI = isvc({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"}})
DOC_LEGACY = isvc({"sklearn": {"storageUri": "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"}},
                  {"serving.kserve.io/secretKey": "localMinIO"})


def test_documented_storage_form():
    p = predictor_from_isvc(DOC_STORAGE)
    assert (p.model_format, p.storage_key, p.model_path, p.runtime) == ("sklearn", "localMinIO", "sklearn/mnist-svm.joblib", "")
    assert p.model_key == "localMinIO"
    assert p.model_type("mlserver-1.x") == "sklearn|rt:mlserver-1.x"


def test_documented_storage_uri_form_goes_to_the_mesh_whole():
    p = predictor_from_isvc(DOC_URI)
    assert p.model_path == "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"
    assert p.model_key == ""  # the storage-config's default key decides, as in ModelMesh


def test_legacy_form_takes_key_and_runtime_from_annotations():
    legacy = copy.deepcopy(DOC_LEGACY)
    legacy["metadata"]["annotations"]["serving.kserve.io/servingRuntime"] = "mlserver-1.x"
    p = predictor_from_isvc(legacy)
    assert (p.model_format, p.storage_key, p.runtime) == ("sklearn", "localMinIO", "mlserver-1.x")


def test_parameters_and_schema_use_modelmeshs_json_key():
    spec = isvc({"model": {"modelFormat": {"name": "onnx", "version": "1"}, "protocolVersion": "grpc-v2",
                           "storage": {"key": "s3", "path": "m/", "parameters": {"bucket": "b2"}, "schemaPath": "s.json"}}})
    p = predictor_from_isvc(spec)
    assert json.loads(p.model_key) == {"storage_key": "s3", "storage_params": {"bucket": "b2"}, "schema_path": "s.json"}
    assert (p.format_version, p.protocol) == ("1", "grpc-v2")


@pytest.mark.parametrize(
    "predictor, message",
    [
        ({"model": {"modelFormat": {"name": "onnx"}}}, "exactly one of storageUri and storage.path"),
        ({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://a/b", "storage": {"path": "x"}}}, "exactly one"),
        ({"model": {"storageUri": "s3://a/b"}}, "modelFormat.name is required"),
        ({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://a/b"}, "sklearn": {"storageUri": "s3://a/b"}}, "cannot be combined"),
        ({}, "has no model"),
        ({"model": {"modelFormat": {"name": "onnx"}, "storage": {"path": "p", "parameters": {"n": 1}}}}, "parameters"),
    ],
)
def test_invalid_specs_say_why(predictor, message):
    with pytest.raises(InvalidSpec, match=message):
        predictor_from_isvc(isvc(predictor))


def test_only_modelmesh_annotated_services_are_ours():
    plain = copy.deepcopy(DOC_URI)
    del plain["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert is_modelmesh(DOC_URI) and not is_modelmesh(plain)


def test_any_spec_edit_makes_a_new_concrete_id_and_the_same_spec_the_same_id():
    p = predictor_from_isvc(DOC_URI)
    same = predictor_from_isvc(copy.deepcopy(DOC_URI))
    edited = copy.deepcopy(DOC_URI)
    edited["spec"]["predictor"]["model"]["storageUri"] = "s3://modelmesh-example-models/sklearn/other.joblib"
    ids = {p.concrete_model_id("r"), same.concrete_model_id("r"), predictor_from_isvc(edited).concrete_model_id("r"), p.concrete_model_id("other-runtime")}
    assert len(ids) == 3
    assert p.concrete_model_id("r").startswith("example-sklearn-isvc__isvc-")


@given(name=st.from_regex(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True), uri=st.text(min_size=1, max_size=40).map(lambda t: "s3://b/" + t.strip() + "x"))
def test_concrete_ids_lead_back_to_their_vmodel(name, uri):
    spec = isvc({"model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}}, name=name)
    assert vmodel_of(predictor_from_isvc(spec).concrete_model_id("rt")) == name


def test_ids_that_are_not_concrete_isvc_ids_belong_to_nobody():
    assert vmodel_of("plain-model") is None and vmodel_of("x__isvc-short") is None and vmodel_of("__isvc-0123456789") is None


def test_azure_blob_uris_become_azure_storage_parameters_as_in_modelmesh():
    spec = isvc({"model": {"modelFormat": {"name": "onnx"},
                           "storageUri": "https://acct.blob.core.windows.net/models/onnx/mnist",
                           "storage": {"parameters": {"container": "overridden", "region": "x"}}}})
    p = predictor_from_isvc(spec)
    assert p.model_path == "onnx/mnist"
    assert json.loads(p.model_key) == {"storage_params": {"account_name": "acct", "container": "models", "region": "x", "type": "azure"}}
    plain = predictor_from_isvc(isvc({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "https://example.com/m.onnx"}}))
    assert plain.model_path == "https://example.com/m.onnx" and plain.model_key == ""
