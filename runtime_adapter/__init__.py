"""Runtime adapter: serves the model-runtime SPI (`mmesh.ModelRuntime`) and v2
inference for the models it holds, behind which sit the built-in runtimes
(ONNX Runtime now; TorchScript, MLServer and Triton adapters later).

It runs inside the sidecar's process (calls on worker threads) or as its own
process on a Unix socket; both go through `ModelRepository`, so both behave the
same. Nothing here imports `mesh/`.
"""
