"""Daily XGBoost training: point-in-time training sets (``training_set``) and the fit (``train``)."""
