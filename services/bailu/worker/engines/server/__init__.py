"""Engine servers: vLLM, SGLang, LmDeploy or ms-swift's `swift deploy` run as the worker's child process.

- `http.py`: `HttpEngine`, the `Engine` that streams each request through the server's OpenAI API.
- `process.py`: `EngineServer`, the supervised process at its current address, its HTTP client and
  its scraped metrics.
- `adapters.py`: `ServerAdapters`, the LoRA adapter lifecycle (load, unload, restart to apply, roll back).
- `dialects.py`: what differs between the engines, as frozen data; `versions.py`: the releases pinned.
- `supervisor.py`: start, health-wait, restart and stop the child process.
- `openai_http.py`: the pure OpenAI HTTP codec; `engine_metrics.py`: the engines' metrics, normalised.
"""
