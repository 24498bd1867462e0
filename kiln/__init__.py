"""Kiln: an AWS Batch-compatible job scheduler that really runs jobs."""

__version__ = "0.1.0"
