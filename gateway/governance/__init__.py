"""Governance of served model tuples: the registry of what serves (owner, validating eval, when
it was last evaluated, which tuple served when) and the gates a tuple passes before it serves.

- :mod:`.settings`: the ``[governance]`` section (what an ungated tuple gets, tolerances,
  re-evaluation period, where the history is kept);
- :mod:`.evidence`: the eval files ``tiergate eval --out`` writes, read and checked;
- :mod:`.gates`: the gates by name (evaluated, quantized, adapter, distilled), pure functions
  of a tuple, its settings and its evidence;
- :mod:`.history`: which tuple served when, kept in SQLite, so a record's tuple can always be
  looked up;
- :mod:`.registry`: the gateway's view: admits each model at start, refuses or marks it, tracks
  staleness (metrics, alerts through the canary sinks), and the team's numbers.
"""
