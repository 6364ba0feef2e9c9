"""Serving formats: GGUF files and adapters, the GPTQ checkpoint format."""
