"""The pipeline: camera threads -> frame board -> inference worker -> dispatcher."""
