"""dealseg.client: score an image pool with the exported DEAL graph and select what to label.

Modules, each importable without torch (heavy libraries are imported where they are used):

    cli      `deal-client score | select | merge | health`
    run      the streaming scorer (`score_paths`) and the selection step (`run_selection`)
    engines  `EmbeddedEngine` (ONNX Runtime) and `TritonEngine` (tritonclient gRPC/HTTP)
    decode   file -> uint8 RGB [H, W, 3] at the model's input size, or a `DecodeError` reason
    pool     POOL (folder, list file, stdin) -> paths; `--shard i/n`
    store    the out dir: scores.jsonl, embeddings.f32, meta.json, selection.{txt,json}, merge
    select   pure-numpy strategies: ds, de, entropy, random, coreset, and `diverse` suppression
    maps     `--maps` PNGs: image | difficulty overlay | segmentation
"""
