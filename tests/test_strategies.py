"""One descriptor per strategy: every registry that ranks names exactly the described ones."""

from __future__ import annotations

import subprocess
import sys

from dealseg.core import strategies
from dealseg.core.ranking import STRATEGIES as CLIENT_RANKING
from dealseg.core.regions import REGION_STRATEGIES


def test_every_registry_names_exactly_the_described_strategies() -> None:
    from dealseg.training.acquisition import STRATEGIES as LOOP

    frames = strategies.names(unit="frame")
    assert sorted(CLIENT_RANKING) == sorted(strategies.names(unit="frame", client=True))
    assert sorted(LOOP) == sorted(frames)
    assert sorted(REGION_STRATEGIES) == sorted(strategies.names(unit="region"))
    assert sorted(strategies.DESCRIPTORS) == sorted([*frames, *strategies.names(unit="region")])
    assert strategies.DEFAULT_STRATEGY in CLIENT_RANKING


def test_needs_and_labels_come_from_the_descriptor() -> None:
    from dealseg.training.acquisition import needs_model

    assert [n for n in strategies.names(unit="frame") if not needs_model(n)] == ["random"]
    assert strategies.label("region-ds-sample") == "Regions sampled by DS"
    assert strategies.label("not-a-strategy") == "not-a-strategy"
    for info in strategies.DESCRIPTORS.values():
        assert info.meaning and info.label and info.color
        assert ("embeddings" in info.needs) == info.name.endswith("coreset")


def test_the_descriptors_load_without_numpy() -> None:
    code = "import sys, dealseg.core.strategies; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
