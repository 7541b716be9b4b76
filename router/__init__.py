"""Routing policy: which tier answers a request — modes as strategies by name (fixed, prompt,
cascade), live thresholds, calibration."""
