from duo.params import Gate
from stages.gate import verdict

EVAL = {"precision": {"mean": 72.5, "c50": 0.9, "c70": 0.55}, "similarity": {"mean": 40.0, "c70": 0.2}}


def test_mean_passes_at_threshold():
    v = verdict(EVAL, Gate(score="precision", statistic="mean", threshold=72.5), cycle=0)
    assert v["passed"] and v["value"] == 72.5 and v["next"].startswith("deliver")


def test_coverage_statistic_is_compared_in_percent():
    v = verdict(EVAL, Gate(score="precision", statistic="c70", threshold=60), cycle=0)
    assert v["value"] == 55.0 and not v["passed"] and v["next"].startswith("run cycle 1")


def test_max_cycles_stops_the_loop_and_missing_values_fail():
    v = verdict(EVAL, Gate(score="similarity", threshold=90, max_cycles=2), cycle=1)
    assert not v["passed"] and v["next"].startswith("stop")
    v = verdict({"precision": {"mean": None}}, Gate(), cycle=0)
    assert v["value"] is None and not v["passed"]
