"""amo: train and release the brain of a multi-agent copilot."""
__version__ = "0.1.0"
