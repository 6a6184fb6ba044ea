"""marginbench: margin consistency of robust image classifiers."""

__version__ = "0.1.0"
