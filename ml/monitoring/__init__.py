"""Drift monitoring: Evidently reports, thresholds and the retraining decision."""
