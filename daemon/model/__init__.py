"""The model: the ONNX session, letterboxing in, output decoders out."""
