"""A small custom MLServer runtime that serves one ONNX file with onnxruntime:
what a user would write to put an .onnx model behind MLServer (1.7 has no
built-in ONNX runtime). bench_mlserver.py serves the same file with it.

Only MLServer's venv imports this module: MLServer loads it by the dotted path
in model-settings.json (``"implementation": "mlserver_onnx_runtime.OnnxModel"``),
with this directory on the MLServer process's PYTHONPATH.

The session is built as mmesh's own ONNX runtime builds it
(runtime_adapter/runtimes/onnx.py): CPU provider, 1 intra-op thread, 1 inter-op
thread. `predict` is the usual MLServer shape: decode each v2 input with
MLServer's codecs (NumpyCodec unless the input says otherwise), run the
session, encode each output with NumpyCodec. Like MLServer's own runtimes
(mlserver-sklearn, -xgboost), it calls the model synchronously in
`async def predict`; with `parallel_workers` >= 1 that runs in MLServer's
inference worker process(es), not in the server's event loop.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        model_uri = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(model_uri, sess_options=options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {inp.name: self.decode(inp, default_codec=NumpyCodec) for inp in payload.inputs}
        names = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        results = self._session.run(names, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, np.asarray(value)) for name, value in zip(names, results)],
        )
