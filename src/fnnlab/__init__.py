"""fnnlab: a Hydra + MLflow research harness around a from-scratch feed-forward network."""

__version__ = "0.1.0"
