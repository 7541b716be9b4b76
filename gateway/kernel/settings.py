"""The base of every settings section.

Each package owns the section it reads (``gateway/backends/settings.py``, ``router/settings.py``,
``canary/settings.py``, ...); :class:`gateway.settings.Settings` composes them into the one typed
settings object read from the config file and the environment.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
