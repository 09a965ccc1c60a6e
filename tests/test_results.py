"""The published figures say what they ran with: a committed report whose loss form or selection rule is not
today's default fails here, unless it says, dated, that it is stale. A change of default comes with its re-run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from itra_tune.config import LossConfig, SelectConfig

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
REPORTS = sorted(RESULTS.glob("*/report.json"))  # pipelines/reproduce.py's
REGRET = RESULTS / "search-quality" / "regret.json"  # benchmarks/search_quality.py's, one entry a task
ORACLE = RESULTS / "search-quality" / "oracle.json"  # benchmarks/oracle.py's grids: a loss form, no selection


def ran_with(report: dict, where: str, rule: bool = True) -> None:
    """``report`` records today's default loss form (and selection rule), or a dated note that it is stale."""
    stale = report.get("stale")
    if stale is not None:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(stale.get("since", ""))) and stale.get("why"), \
            f"{where}: a stale note needs its date (since: YYYY-MM-DD) and why"
        return
    form, select = LossConfig().form, SelectConfig().rule
    assert report.get("loss_form") == form, (f"{where}: made with loss form {report.get('loss_form')!r}, today's "
                                             f"default is {form!r}: re-run it, or mark it stale")
    if rule:
        assert report.get("selection_rule") == select, (f"{where}: made with selection rule "
                                                        f"{report.get('selection_rule')!r}, today's default is "
                                                        f"{select!r}: re-run it, or mark it stale")


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.parent.name)
def test_a_reproduction_report_ran_with_todays_defaults_or_says_it_is_stale(path):
    ran_with(json.loads(path.read_text()), str(path.relative_to(RESULTS)))


def test_the_search_quality_study_ran_with_todays_defaults():
    for task, report in json.loads(REGRET.read_text()).items():
        ran_with(report, f"search-quality/regret.json, {task}")
    ran_with(json.loads(ORACLE.read_text()), "search-quality/oracle.json", rule=False)


def test_the_check_fails_on_a_report_of_another_default_and_passes_a_dated_stale_one():
    former = "paper" if LossConfig().form != "paper" else "gated"
    other = {"loss_form": former, "selection_rule": SelectConfig().rule}
    with pytest.raises(AssertionError, match=rf"made with loss form '{former}', today's default is "
                                             rf"'{LossConfig().form}'"):
        ran_with(other, "a report")
    with pytest.raises(AssertionError, match=r"needs its date"):
        ran_with({**other, "stale": {"why": "former form"}}, "a report")
    ran_with({**other, "stale": {"since": "2026-12-07", "why": "former form"}}, "a report")
