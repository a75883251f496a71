"""The mesh sidecar: v2 gRPC front end, etcd-backed registry, on-demand
loading with LRU eviction, and (later) routing between pods."""
