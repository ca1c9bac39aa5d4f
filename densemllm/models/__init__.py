"""Package data: the embedded default model (``default/``: config, tokenizer and, once
trained, ``model.safetensors``). See densemllm.data.default_model and docs/default-model.md."""
