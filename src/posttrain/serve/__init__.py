"""`posttrain serve MODEL_DIR`: vLLM's OpenAI-compatible server on an export, started from its own
environment (.venv-serve, vLLM's CPU build: its pins conflict with the pipeline's transformers).

    posttrain serve results/export/sft/merged --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "results/export/sft/merged", "messages": [{"role": "user", "content": "Hi"}]}'

The command waits until the server answers a one-token request, prints its URL, and on Ctrl-C or
SIGTERM stops vLLM's whole process group (its engine and worker processes too). docs/serving.md
lists the export formats vLLM's CPU build loads.
"""
