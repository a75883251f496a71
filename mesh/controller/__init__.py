"""The Kubernetes controller: KServe's InferenceService (ModelMesh mode),
ServingRuntime and ClusterServingRuntime mapped onto the mesh.

One job per module: `predictor` reads an InferenceService into what the mesh
registers; `runtime_choice` picks the runtime (honouring `priority`);
`deployment` renders a runtime's Deployment and the shared Service; `status`
turns the mesh's vModel state into the InferenceService status; `informer`
lists and watches one resource kind; `workqueue` is the rate-limited queue;
`leader` the Lease-based election; `mesh_state` watches the mesh's etcd
tables (the push that drives status); `reconciler` ties them per key; and
`controller` wires it all and runs it (`mmesh controller`)."""
