"""The Roboflow path: per-stream aggregation, request bodies, the durable spool, the uploader."""
