"""The gateway: one port in front of every InferenceService (KServe's ingress)."""
