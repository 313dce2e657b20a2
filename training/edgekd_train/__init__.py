"""edge-kd training side: data loaders, calibration and the model card."""

__version__ = "0.1.0"
