"""tiergate's HTTP service: protocol, app factory, settings, backends, registry, CLI."""

__version__ = "0.1.0"
