"""Client keys and their policies: the key store (:mod:`~gateway.keys.store`), the limiter
shared by the replicas (:mod:`~gateway.keys.limiter`, its algorithm and error bound), and the
gate the front door asks (:mod:`~gateway.keys.gate`). See docs/configuration.md, "Client keys
and their policies"."""
