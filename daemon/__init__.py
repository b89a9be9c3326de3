"""edgewatch: cameras in, batched ONNX detections out, to Roboflow Model Monitoring, Prometheus and MQTT."""

__version__ = "0.1.0"
