"""One predictor process: HTTP (OpenAI, KServe V1, Open Inference Protocol V2) in front of the engine."""
