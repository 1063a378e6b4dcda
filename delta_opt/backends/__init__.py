"""Lowerings of ``delta_opt::delta_attention`` to inference runtimes.

``onnx``: one ``delta_opt.DeltaAttention`` node per site with a model-local function body made of
standard ONNX ops (ONNX Runtime runs it with no custom library); ``polygraphy``: compare an
exported model against PyTorch through Polygraphy's runners and comparator; ``tensorrt``: each
node as two ahead-of-time TensorRT plugins running the Triton kernels, and ``build_engine``.
"""
