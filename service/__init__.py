"""pollinid service: identification API, observations, validation and model management."""

__version__ = "0.1.0"
