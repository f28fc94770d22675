# Two commands on a fresh machine:  `make run` (serve the embedded model on :8080)  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
MODEL_NAME ?= llama2

.PHONY: install model run test lint bench clean

$(BIN)/isvc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel (a plain `torch` would resolve a CUDA build of several GB)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/isvc

install: $(BIN)/isvc

# the chat model (SmolLM2, ~90 s once) and the embedding model the encoder tests compare against (seconds)
model: install
	$(BIN)/isvc models prepare SmolLM2-135M-Instruct all-MiniLM-L6-v2

run: model
	@echo ""
	@echo "Serving SmolLM2-135M-Instruct as '$(MODEL_NAME)' on http://localhost:$(PORT). In another shell, try:"
	@echo "  curl -H 'content-type:application/json' localhost:$(PORT)/openai/v1/chat/completions -d '{\"model\": \"$(MODEL_NAME)\", \"messages\": [{\"role\": \"user\",\"content\": \"What is the capital of France?\"}], \"stream\":false, \"max_tokens\": 64 }'"
	@echo ""
	$(BIN)/isvc serve --model_dir=$$($(BIN)/isvc models path) --model_name=$(MODEL_NAME) --http_port=$(PORT)

test: model lint
	$(BIN)/pytest -q

# The house rules: lint + format, types, and the import layers (pyproject.toml [tool.importlinter]).
lint: install
	$(BIN)/ruff check isvc tests bench
	$(BIN)/ruff format --check isvc tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: model
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info
