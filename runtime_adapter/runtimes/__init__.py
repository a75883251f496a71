"""Built-in runtimes, by the model type names used in `modelInfo.type`."""
