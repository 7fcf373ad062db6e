"""Hooks run inside the Ray path's scoring actors (importable on the workers: the tests'
folder is on their PYTHONPATH)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class KillOnce:
    """Before its `after`-th batch, the first actor to get there kills itself with `ray.kill`
    (restart allowed) and waits for the kill, holding the batch: the batch is lost with the
    actor and must be run again. `marker` records that the kill happened (and that it happens
    once: the restarted actor counts its batches from 1 again)."""

    def __init__(self, marker: Path, after: int) -> None:
        self.marker, self.after = str(marker), after

    def __call__(self, batch: int) -> None:
        if batch != self.after:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
        threading.Event().wait()  # the kill ends this process; the batch never returns


class BlockAfterMarker:
    """Before its first batch an actor creates `marker` and then waits forever: the run is
    known to be scoring, and stays so until the driver stops it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __call__(self, batch: int) -> None:
        Path(self.marker).touch()
        threading.Event().wait()


def blocked_cli(marker: str, args: list[str]) -> None:
    """`deal-client ARGS` whose Ray actors block as BlockAfterMarker does (for a signal test)."""
    import dataclasses

    from dealseg.client import cli

    make = cli._ray_scoring

    def blocking(*a: object, **k: object) -> object:
        scoring = make(*a, **k)
        return (
            None if scoring is None else dataclasses.replace(scoring, hook=BlockAfterMarker(marker))
        )

    cli._ray_scoring = blocking
    cli.main(args)
