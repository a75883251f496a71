from protos import model_mesh_pb2 as _model_mesh_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ("pageToken", "pageSize", "statusFilter")
    PAGETOKEN_FIELD_NUMBER: _ClassVar[int]
    PAGESIZE_FIELD_NUMBER: _ClassVar[int]
    STATUSFILTER_FIELD_NUMBER: _ClassVar[int]
    pageToken: str
    pageSize: int
    statusFilter: _containers.RepeatedScalarFieldContainer[_model_mesh_pb2.ModelStatusInfo.ModelStatus]
    def __init__(self, pageToken: _Optional[str] = ..., pageSize: _Optional[int] = ..., statusFilter: _Optional[_Iterable[_Union[_model_mesh_pb2.ModelStatusInfo.ModelStatus, str]]] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("modelId", "modelInfo", "status", "sizeInBytes", "copies")
    MODELID_FIELD_NUMBER: _ClassVar[int]
    MODELINFO_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZEINBYTES_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    modelId: str
    modelInfo: _model_mesh_pb2.ModelInfo
    status: _model_mesh_pb2.ModelStatusInfo
    sizeInBytes: int
    copies: int
    def __init__(self, modelId: _Optional[str] = ..., modelInfo: _Optional[_Union[_model_mesh_pb2.ModelInfo, _Mapping]] = ..., status: _Optional[_Union[_model_mesh_pb2.ModelStatusInfo, _Mapping]] = ..., sizeInBytes: _Optional[int] = ..., copies: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "nextPageToken", "totalModels")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXTPAGETOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTALMODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    nextPageToken: str
    totalModels: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., nextPageToken: _Optional[str] = ..., totalModels: _Optional[int] = ...) -> None: ...

class RegisterModelsRequest(_message.Message):
    __slots__ = ("models", "minCopies")
    class MinCopiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MINCOPIES_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_model_mesh_pb2.RegisterModelRequest]
    minCopies: _containers.ScalarMap[str, int]
    def __init__(self, models: _Optional[_Iterable[_Union[_model_mesh_pb2.RegisterModelRequest, _Mapping]]] = ..., minCopies: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RegisterModelsResponse(_message.Message):
    __slots__ = ("results",)
    class Result(_message.Message):
        __slots__ = ("modelId", "code", "message")
        MODELID_FIELD_NUMBER: _ClassVar[int]
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        modelId: str
        code: str
        message: str
        def __init__(self, modelId: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RegisterModelsResponse.Result]
    def __init__(self, results: _Optional[_Iterable[_Union[RegisterModelsResponse.Result, _Mapping]]] = ...) -> None: ...
