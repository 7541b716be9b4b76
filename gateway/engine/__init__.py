"""The in-process engine: transformers + torch models decoded by tiergate itself.

- :mod:`gateway.engine.loader` loads and verifies weights (digest pins, int8, LoRA adapters),
- :mod:`gateway.engine.prompts` turns a request into token ids (chat templates, validation),
- :mod:`gateway.engine.sampling` turns logits into tokens (penalties, seeded sampling, logprobs),
- :mod:`gateway.engine.text` turns tokens into text (incremental detokenizing, stop strings),
- :mod:`gateway.engine.decoder` runs one request's decode loop.

:class:`gateway.backends.engine.EngineBackend` puts them behind the Backend interface. Nothing here
imports torch at import time of :mod:`gateway.engine` itself.
"""
