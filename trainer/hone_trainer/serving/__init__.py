"""The runtime's second job: the built-in OpenAI-compatible server, ``python -m hone_trainer serve``.

* ``app``: the Starlette app, the guard around every /v1 route (auth, readiness,
  capacity, errors), the model loader thread and the uvicorn lifecycle;
* ``protocol``: OpenAI's request models and error object;
* ``routes``: one function per endpoint (chat, completions, models);
* ``generation``: a request's choices in the engine, the JSON response or the stream,
  and metering;
* ``metrics``, ``auth``, ``state``: Prometheus series, API keys, what they share;
* ``loading``: the base model and verified adapters (also ``python -m hone_trainer fetch``);
* ``engine``: continuous batching with mixed LoRA adapters per batch; ``decode``, ``packed``, ``lora``,
  ``prefix``: its decoding step, CPU linear layers, stacked adapters and prefix cache.
"""
