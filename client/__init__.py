"""dealseg.client: score an image pool with the exported DEAL graph and select what to label.

Modules, each importable without torch (heavy libraries are imported where they are used):

    cli      `deal-client score | select | merge | eval | health`
    run      the streaming scorer (`Scorer`, `score_paths`), the whole run (`score_pool`) and
             the selection step (`run_selection`)
    evaluation  `deal-client eval`: strategies judged on labelled frames (`evaluate_pool`)
    engines  `EmbeddedEngine` (ONNX Runtime) and `TritonEngine` (tritonclient gRPC/HTTP)
    store    the out dir: scores.jsonl, embeddings.f32, meta.json, selection.{txt,json}, merge
    maps     `--maps` PNGs: image | difficulty overlay | segmentation

Decoding, pool listing, the selection strategies and eval's labels and metrics are
`dealseg.core`'s (decode, pool, ranking, labels, metrics), shared with training and export.
"""
