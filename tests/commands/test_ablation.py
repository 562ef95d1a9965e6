"""The ablation report: `dvc exp show --json` parsed into the paper's Table 2 rows."""

from __future__ import annotations

import pytest

from pipeline.commands import ablation


def test_ablation_table_from_exp_show():
    def rec(name, lase, tcn, tf, mean, stamp):
        # what `dvc exp show --json` passes on of cv.json: scalars only (its lists are dropped)
        cv = {"raw": {"mean": mean, "valence": mean - 0.1, "arousal": mean + 0.1}, "smoothed": {"mean": mean},
              "backbones": "random-init: iresnet, vggish"}
        return {
            "rev": "abc1234def",
            "name": name,
            "data": {
                "timestamp": stamp,
                "params": {"params.yaml": {"data": {"model": {"lase": lase, "tcn": tcn, "transformer": tf}}}},
                "metrics": {"metrics/cv.json": {"data": cv}},
            },
        }

    doc = [
        {**rec(None, True, True, True, 0.61, "2024-01-01T00:00:00"), "rev": "workspace", "experiments": [
            {"revs": [rec("abl-lase0-tcn0-transformer0", False, False, False, 0.4, "2024-01-02T00:00:00")]},
            {"revs": [rec("abl-lase1-tcn1-transformer1", True, True, True, 0.66, "2024-01-03T00:00:00")]},
        ]}
    ]
    rows = ablation.table(doc)
    assert len(rows) == 8 and rows[0]["name"] == "abl-lase0-tcn0-transformer0" and rows[0]["ccc_mean"] == 0.4
    assert rows[0]["ccc_valence"] == pytest.approx(0.3) and rows[0]["random_init"]
    assert rows[-1]["ccc_mean"] == 0.66  # the newest record wins
    assert rows[3]["name"] is None
    text = ablation.format_table(rows)
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    assert len(lines) == 9  # header, the eight rows in the paper's order, its value beside ours
    assert lines[1] == "| baseline | – | – | – | 0.4000 | 0.3108 | 0.3000 | 0.5000 | 0.4000 | abl-lase0-tcn0-transformer0 |"
    assert lines[2].startswith("| +LA-SE | ✓ | – | – | n/a | 0.3396 |")
    assert lines[4].startswith("| +Transformer | – | – | ✓ | n/a | 0.3877 |")
    assert lines[8].startswith("| +LA-SE + TCN + Transformer | ✓ | ✓ | ✓ | 0.6600 | 0.6356 |")
    assert "not Aff-Wild2 numbers" in text and "arXiv 2403.12425" in text and "63.71" in text
    assert ablation.exp_name((True, False, True)) == "abl-lase1-tcn0-transformer1"
    unlabelled = ablation.table([rec("x", True, True, True, 0.5, "2024")])
    unlabelled[-1]["random_init"] = False
    assert "not Aff-Wild2" not in ablation.format_table(unlabelled)

