"""The eval harness: task sets with slices and graders, run against any backend. Used by the
canaries, the reference pair and verifier-data collection alike."""
