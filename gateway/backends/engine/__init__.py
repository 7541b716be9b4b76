"""The in-process engine: transformers + torch models decoded by tiergate itself.

- :mod:`.loader` loads and verifies weights (digest pins, LoRA adapters),
- :mod:`.int8` quantizes Linear layers to int8 (dynamic or weight-only, the head re-scored),
- :mod:`.prompts` turns a request into token ids (chat templates, validation),
- :mod:`.sampling` turns logits into tokens (penalties, seeded sampling, logprobs),
- :mod:`.text` turns tokens into text (incremental detokenizing, stop strings),
- :mod:`.decoder` runs one request's decode loop.

:class:`gateway.backends.engine.backend.EngineBackend` puts them behind the Backend interface.
Nothing here imports torch at import time of :mod:`gateway.backends.engine` itself.
"""
