"""Models you can take away: trained checkpoints and ``dlasearch.load`` (``checkpoint``), and exports
that need only torch, torch.export or ONNX (``export``), and a model's answers for images (``predict``)."""
