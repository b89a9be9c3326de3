"""The HTTP side: the Prometheus endpoint and /healthz, the inference API and the monitoring page."""
