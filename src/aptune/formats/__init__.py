"""Export formats for serving engines: stock HF folders, ONNX (encoders), GGUF (LLaMA family)."""
