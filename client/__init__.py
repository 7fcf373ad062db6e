"""dealseg.client: score an image pool with the exported DEAL graph and select what to label.

Modules, each importable without torch (heavy libraries are imported where they are used):

    cli      `deal-client score | select | merge | report | export | eval | health`
    options  its options and the typed settings they become (`settings`)
    settings the run's settings as frozen dataclasses, checked alike for the CLI and the API
    scoring  the streaming scorer (`Scorer`) and the scoring step (`score_into`)
    selection  the selection step (`pick`, `run_selection`, `check_replace`)
    drawing  the maps and report of a selection (`draw`)
    pipeline a whole run: score and select (`score_pool`), select again (`reselect`), merge and
             select (`merge_and_select`)
    api      `dealseg.score` / `dealseg.select` for notebooks and pipelines
    report   `report.html`: the selection for a person
    handoff  the selection for a labelling tool: Label Studio, CVAT, FiftyOne, CSV
    evaluation  `deal-client eval`: strategies judged on labelled frames (`evaluate_pool`)
    engines  `EmbeddedEngine` (ONNX Runtime) and `TritonEngine` (tritonclient gRPC/HTTP)
    outdir   the out dir: its lock, meta.json, resume checks, the format and its writer, the
             scores as a table, merge, selection.{txt,json}
    jsonl    scores.jsonl + embeddings.f32 (writer, reader)
    parquet  scores.parquet/ (schema, writer, reader)
    records  the scores record both formats hold, which one counts, `Table`
    fleet    `score --ray`: Ray actors running the scorer over blocks of paths, one Parquet
             part a block (ray imported there only)
    remote   pools in object storage: s3://, gs://, http(s):// URIs
    maps     `--maps` PNGs: image | difficulty overlay | segmentation, and their raw layers

Decoding, pool listing, the selection strategies and eval's labels and metrics are
`dealseg.core`'s (decode, pool, ranking, labels, metrics), shared with training and export.
"""
