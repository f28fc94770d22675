"""The control plane: manifests in a SQLite store, a reconciler, and supervised predictor processes."""
