"""The web console's built assets (docs/console.md): one HTML shell, one script, one style
sheet and an icon, shipped as package data in ``static/``. They are built from the TypeScript
sources in ``src/`` by esbuild (``make console``); the bundle is committed, so serving needs no
Node. :mod:`gateway.http.console_routes` serves them at ``/console``."""
