from duo.params import Gate
from duo.loop.gate import verdict

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


def test_pairwise_gate_and_cost_sum():
    from duo.loop.gate import cost

    pw = {"pairwise": {"win": 0.3, "tie": 0.5, "loss": 0.2}}
    assert verdict(pw, Gate(score="pairwise", statistic="win_or_tie", threshold=80), 0)["passed"]
    assert not verdict(pw, Gate(score="pairwise", statistic="win", threshold=80), 0)["passed"]
    synth = {"service": {"prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.5}}
    ev = {"judge": {"calls": {"openai/gpt-4o": {"prompt_tokens": 100, "completion_tokens": 9, "cost_usd": 1.25}}}}
    c = cost(synth, ev, 2)
    assert c["cost_usd"] == 1.75 and c["prompt_tokens"] == 110 and set(c["stages"]) == {"synthesize",
                                                                                        "evaluate:openai/gpt-4o"}
    ev["judge"]["calls"]["x"] = {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": None}
    assert cost(synth, ev, 2)["cost_usd"] is None, "an unknown price makes the total unknown"
