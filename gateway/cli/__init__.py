"""The command line: ``tiergate serve``, models, keys, records, thresholds, canaries, evals and
verifiers — front ends over the same objects the server uses."""
