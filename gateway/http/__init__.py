"""The HTTP service: the app and its one front door, routes, admin API, server and composition
root (:mod:`.state`). The only layer that knows every other part."""
