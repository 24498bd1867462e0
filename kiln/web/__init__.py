"""The dashboard at `/ui`: static pages that read the Batch API, plus a few read-only JSON endpoints."""
