"""Aggregation of label-efficiency cells over seeds: the seed-paired comparison with the baseline (hand-computed)."""

from __future__ import annotations

import pytest

from dentalmim.label_efficiency_report import _paired_table, paired_differences, summarise, verdict

#: froc_fom per (encoder, fraction, seed); the 0.5-fraction mae cell of seed 2 is undefined (None).
VALUES = {("scratch", 0.5, 0): 0.20, ("scratch", 0.5, 1): 0.30, ("scratch", 0.5, 2): 0.10,
          ("mae", 0.5, 0): 0.25, ("mae", 0.5, 1): 0.20, ("mae", 0.5, 2): None,
          ("scratch", 1.0, 0): 0.50, ("scratch", 1.0, 1): 0.40, ("scratch", 1.0, 2): 0.60,
          ("mae", 1.0, 0): 0.60, ("mae", 1.0, 1): 0.55, ("mae", 1.0, 2): 0.50}


def cells() -> list[dict]:
    return [{"encoder": e, "fraction": f, "seed": s, "metrics": {"froc_fom": v}, "ci": {"froc_fom": [None, None]},
             "n_train_images": 4 if f == 0.5 else 8} for (e, f, s), v in VALUES.items()]


def test_paired_differences_pair_cells_by_seed_and_skip_undefined_ones() -> None:
    paired = paired_differences(cells(), "froc_fom", "scratch")
    assert set(paired) == {"mae"}  # the baseline is not compared with itself
    half, full = paired["mae"][0.5], paired["mae"][1.0]
    assert half["seeds"] == [0, 1] and half["diffs"] == pytest.approx([0.05, -0.10])  # seed 2: mae undefined
    assert (half["n"], half["better"], half["mean"]) == (2, 1, pytest.approx(-0.025))
    assert full["seeds"] == [0, 1, 2] and full["diffs"] == pytest.approx([0.10, 0.15, -0.10])
    assert (full["n"], full["better"], full["mean"]) == (3, 2, pytest.approx(0.05))


def test_verdict_and_table_say_how_many_seeds_the_encoder_wins() -> None:
    summary = summarise(cells(), "froc_fom")
    paired = paired_differences(cells(), "froc_fom", "scratch")
    line = verdict(summary, "froc_fom", "scratch", paired)
    assert ("at 100% labels (8 images): mae 0.550 vs scratch 0.500 (+0.050; paired by seed +0.050, better in 2 of 3 "
            "seeds)") in line
    assert ("at 50% labels (4 images): mae 0.225 vs scratch 0.200 (+0.025; paired by seed -0.025, better in 1 of 2 "
            "seeds)") in line
    assert "better in" not in verdict(summary, "froc_fom", "scratch")  # without pairs: the plain comparison
    rows = _paired_table(paired, "scratch", "froc_fom")
    assert "| encoder | 50% | 100% |" in rows
    assert "| mae | -0.025 (1/2; +0.050, -0.100) | +0.050 (2/3; +0.100, +0.150, -0.100) |" in rows
    assert _paired_table({}, "scratch", "froc_fom") == []
