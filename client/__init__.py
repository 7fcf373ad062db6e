"""dealseg.client: score an image pool with the exported DEAL graph and select what to label.

Modules, each importable without torch (heavy libraries are imported where they are used):

    cli      `deal-client score | select | merge | health`
    run      the streaming scorer (`Scorer`, `score_paths`), the whole run (`score_pool`) and
             the selection step (`run_selection`)
    engines  `EmbeddedEngine` (ONNX Runtime) and `TritonEngine` (tritonclient gRPC/HTTP)
    store    the out dir: scores.jsonl, embeddings.f32, meta.json, selection.{txt,json}, merge
    maps     `--maps` PNGs: image | difficulty overlay | segmentation

Decoding, pool listing and the selection strategies are `dealseg.core`'s (decode, pool,
ranking), shared with training and export.
"""
