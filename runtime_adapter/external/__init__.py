"""Adapters to external v2 servers (MLServer, Triton) behind the runtime SPI.

The external server is its own process (in Kubernetes its own container,
sharing the `/models` volume with the adapter). For each model the adapter
writes the layout the server expects under `<models_dir>/_<server>_models/`,
asks the server to load it over the v2 repository extension, and forwards
inference and metadata to it as whole v2 messages. To the mesh it looks like
any other runtime: the same `ModelRepository` does the bookkeeping.

Modules: `v2_client` (the gRPC calls and their error mapping), `layout`
(safe directory names, disk sizes), `schema` (KServe `_schema.json`),
`process_memory` (RSS of the server's process tree), `request_check`
(malformed tensors are INVALID_ARGUMENT before forwarding), `base` (what both
servers share: load/unload/size/start-up, the forwarding model), `mlserver`
and `triton` (their layouts), `factory` (assembly from options).
"""
