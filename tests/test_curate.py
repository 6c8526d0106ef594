"""Planted fixtures where every removal is known: assert the kept ids and the removed id -> reason map
exactly, not counts."""
import json

from click.testing import CliRunner

from duo.params import Curate
from duo.synth import curate, filters

# The planted fixture was written against these fixed bounds (the shipped default derives them per
# task from train: tests below).
FIXED = dict(min_instruction_tokens=3, max_instruction_tokens=2048, min_response_tokens=1,
             max_response_tokens=2048, min_passage_words=40)

SKY = ("Explain in a short paragraph why the sky appears blue on a clear day to a curious ten year old child",
       "Sunlight contains every colour. When it passes through the air, tiny gas molecules scatter the short blue "
       "waves far more than the long red ones, so blue light reaches our eyes from every direction of the sky.")
BREAD = ("Describe the basic steps a beginner should follow to bake a simple loaf of white bread at home",
         "Mix flour, water, yeast and salt into a dough, knead it for ten minutes until smooth, let it rise "
         "until doubled, shape it into a loaf, let it rise again and bake it in a hot oven for about half an hour.")
TIDES = ("Summarize how the moon causes ocean tides on Earth for a general audience in two sentences",
         "The moon's gravity pulls on the oceans, raising a bulge of water on the side facing it and another on "
         "the far side. As the Earth turns through these bulges, coasts see two high and two low tides a day.")
CODE = ("Write a Python function that returns the factorial of a non negative integer using a simple loop",
        "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result")
TEST = {"id": "t1", "task": "qa", "prompt": "What is the boiling point of water at sea level in degrees Celsius?",
        "response": "At sea level and under standard atmospheric pressure, pure water boils at exactly one hundred "
                    "degrees Celsius, which is two hundred and twelve degrees Fahrenheit."}


def row(id_, inst, resp, task="qa"):
    return {"id": id_, "task": task, "prompt": inst, "response": resp}


def swap(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


SEEN = [row("s1", *SKY)]
NEW = [
    row("ok_bread", *BREAD),
    row("exact_seen", SKY[0].upper() + "  ", SKY[1].replace(" ", "   ")),
    row("exact_new", BREAD[0] + "!", BREAD[1]),
    row("same_instruction", BREAD[0].lower(), "Buy a loaf from the bakery down the road; it is quicker and tastes good."),
    row("near_seen", swap(SKY[0], "short", "brief"), SKY[1]),  # one word changed
    row("c1", *TIDES),
    row("c2", swap(TIDES[0], "general", "broad"), TIDES[1]),
    row("c3", swap(TIDES[0], "audience", "readership"), TIDES[1]),
    row("ok_different", "Explain why sunsets often look red or orange instead of blue to a curious child",
        "Near sunset light crosses much more air, so most blue light is scattered away before it reaches us and "
        "the remaining reds and oranges dominate what we see near the horizon."),
    row("ok_code", *CODE),
    row("leak_ngram", "Check this claim for accuracy: at sea level and under standard atmospheric pressure, pure "
                      "water boils at exactly one hundred degrees Celsius, says my textbook.", "The claim is correct."),
    row("leak_prompt", "what is the BOILING point of water at sea level, in degrees celsius", "100 degrees."),
    row("empty", "Tell me a fact about owls please", "   "),
    row("refusal", "Write a limerick about a cat who loves jazz music", "I'm sorry, but I cannot help with that."),
    row("placeholder", "Answer the following: $instruction", "Here is the answer you asked for today."),
    row("json_left", "Give me three tips for better sleep at night", '{"instruction": "x", "response": "y"}'),
    row("no_passage", "Summarize the article in two sentences.", "The article says things happened.", "summarization"),
    row("repeats", "List the colours of the rainbow in order from red", "List the colours of the rainbow in order from red"),
    row("repetitive", "Write a short advert for our shop", "Buy now! " * 60),
    row("too_short", "Hi", "Hello there, how can I help you today?"),
]
EXPECTED_REMOVED = {
    "exact_seen": ("exact_duplicate", "s1"),
    "exact_new": ("exact_duplicate", "ok_bread"),
    "same_instruction": ("exact_instruction", "ok_bread"),
    "near_seen": ("near_duplicate", "s1"),
    "c2": ("near_duplicate", "c1"),
    "c3": ("near_duplicate", "c1"),
    "leak_ngram": ("test_ngram_overlap", "t1"),
    "leak_prompt": ("test_prompt", "t1"),
    "empty": ("empty", None),
    "refusal": ("refusal", None),
    "placeholder": ("leftover_template", None),
    "json_left": ("leftover_template", None),
    "no_passage": ("no_passage_to_summarize", None),
    "repeats": ("response_repeats_instruction", None),
    "repetitive": ("repetitive", None),
    "too_short": ("instruction_too_short", None),
}


def test_planted_fixture_exact_outcome():
    kept, removed, report = curate.curate(NEW, SEEN, [TEST], Curate(**FIXED))
    assert [r["id"] for r in kept] == ["ok_bread", "c1", "ok_different", "ok_code"]
    assert {r["id"]: (r["reason"], r["duplicate_of"]) for r in removed} == EXPECTED_REMOVED
    assert report["in"] == len(NEW) and report["out"] == 4


def test_seen_and_test_are_never_modified_and_order_is_kept():
    seen, test = json.dumps(SEEN), json.dumps(TEST)
    kept, removed, _ = curate.curate(list(reversed(NEW)), SEEN, [TEST], Curate(**FIXED))
    assert json.dumps(SEEN) == seen and json.dumps(TEST) == test
    # reversed input: the first of each cluster in *input* order wins
    assert [r["id"] for r in kept] == ["ok_code", "ok_different", "c3", "same_instruction"]
    assert {r["id"]: r["duplicate_of"] for r in removed}["c1"] == "c3"


def test_wrong_language_filter():
    cfg = Curate(language="en")
    french = row("fr", "Expliquez pourquoi le ciel est bleu pendant la journée", "La lumière du soleil est diffusée "
                 "par les molécules de l'air et le bleu est diffusé le plus, donc le ciel est bleu.")
    kept, removed, _ = curate.curate([french, row("ok_code", *CODE)], [], [], cfg)
    assert [r["id"] for r in kept] == ["ok_code"] and removed[0]["reason"] == "wrong_language"


def test_cli(tmp_path):
    from duo.cli import main

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    new, seen, test = write("new.jsonl", NEW), write("seen.jsonl", SEEN), write("test.jsonl", [TEST])
    out, report = tmp_path / "kept.jsonl", tmp_path / "report.json"
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"curate": FIXED}))  # YAML reads JSON
    result = CliRunner().invoke(main, ["curate", new, "--seen", seen, "--test", test, "--out", str(out),
                                       "--report", str(report), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["ok_bread", "c1", "ok_different",
                                                                                  "ok_code"]
    rep = json.loads(report.read_text())
    assert {r["id"]: r["reason"] for r in rep["removed_rows"]} == {k: v[0] for k, v in EXPECTED_REMOVED.items()}
    rejected = tmp_path / "kept.rejected.jsonl"
    assert len(rejected.read_text().splitlines()) == len(EXPECTED_REMOVED)
    bad = CliRunner().invoke(main, ["curate", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert bad.exit_code == 1 and "file not found" in bad.output and "Traceback" not in bad.output


def test_fast_rouge_l_equals_rouge_score():
    import random

    from rouge_score import rouge_scorer, tokenize

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    vocab = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "fast", "slow", "red", "blue"]
    for _ in range(300):
        x = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 70)))
        y = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 70)))
        expected = scorer.score(x, y)["rougeL"].fmeasure
        assert abs(curate.rouge_l(tokenize.tokenize(x, None), tokenize.tokenize(y, None)) - expected) < 1e-12


HEADLINES = [  # the seed's own form: one-sentence passages of ~30 words, a headline each
    ("Summarize this news item as a headline: The city council voted on Tuesday to extend the night bus "
     "service to the northern suburbs after a year of complaints from shift workers who had no way home.",
     "Council extends night buses to northern suburbs"),
    ("Summarize this news item as a headline: Researchers at the coastal institute reported that the local "
     "seal population has doubled over ten years, crediting a ban on net fishing near the breeding beaches.",
     "Seal numbers double after net fishing ban"),
    ("Summarize this news item as a headline: The regional airport will close its older terminal in March "
     "while a new hall is built, and airlines have been asked to move all check-in desks by February.",
     "Airport to shut old terminal during rebuild"),
]


def _headline_rows(prefix, pairs):
    return [row(f"{prefix}{i}", p, r, "summarization") for i, (p, r) in enumerate(pairs)]


def test_auto_bounds_fit_the_users_own_data():
    """Headline pairs in the seeds' own form pass under the derived bounds; the old fixed 40-word passage
    rule dropped every one of them."""
    train = _headline_rows("s", HEADLINES[:2])
    new = _headline_rows("n", HEADLINES[2:]) + [row("short", "Summarize: rain today.", "Rain.", "summarization")]
    limits = filters.derive(train, Curate())
    assert limits["summarization"].min_passage == 13  # half the shorter seed passage (26 words)
    kept, removed, _ = curate.curate(new, train, [], Curate(), thresholds=limits)
    assert [r["id"] for r in kept] == ["n0"]
    assert {r["id"]: r["reason"] for r in removed} == {"short": "instruction_too_short"}
    fixed = filters.derive(train, Curate(**FIXED))
    _, removed, _ = curate.curate(new[:1], train, [], Curate(**FIXED), thresholds=fixed)
    assert [r["reason"] for r in removed] == ["no_passage_to_summarize"]


def test_the_passage_filter_fires_under_auto_bounds():
    """Bounded like the whole instruction and checked after it, the auto passage rule never fired: an
    instruction long enough but with an empty passage now is `no_passage_to_summarize`, while real
    one-sentence passages (the seeds' own form) pass."""
    train = _headline_rows("s", HEADLINES[:2])
    limits = filters.derive(train, Curate())
    empty = [row("colon", "Summarize the following news item as a headline, keeping the names of every place "
                          "and person exactly as they are written in it:", "Council extends night buses",
                 "summarization"),
             row("alone", "Summarize the news item about the night bus service as a short headline that a busy "
                          "commuter could read at a glance", "Night buses extended", "summarization")]
    one_sentence = _headline_rows("n", HEADLINES[2:])
    kept, removed, _ = curate.curate(one_sentence + empty, train, [], Curate(), thresholds=limits)
    assert [r["id"] for r in kept] == ["n0"]
    assert {r["id"]: r["reason"] for r in removed} == {"colon": "no_passage_to_summarize",
                                                      "alone": "no_passage_to_summarize"}
    for r in empty:
        assert len(filters.words(r["prompt"])) >= limits["summarization"].min_instruction, "long enough to reach it"


def test_the_sample_datas_own_summaries_pass_their_derived_passage_bound():
    from tests.conftest import ROOT

    rows = [json.loads(x) for x in (ROOT / "data" / "coverage.jsonl").read_text().splitlines()]
    summaries = [r for r in rows if r["task"] == "summarization"]
    limits = filters.derive(summaries, Curate())["summarization"]
    assert 50 <= limits.min_passage < limits.min_instruction  # multi-sentence passages of 108-148 words
    directive, passage = summaries[0]["prompt"].split("\n\n", 1)  # "Summarize ... in one sentence.\n\n<passage>"
    assert filters.passage_words(directive + "\n\n") == 0
    assert filters.passage_words(summaries[0]["prompt"]) >= len(filters.words(passage))
    for r in summaries:
        wi, wr = filters.words(r["prompt"]), filters.words(r["response"])
        assert filters.quality_reason(r, limits, Curate(), wi, wr) is None, r["id"]


def test_derived_bounds_per_task_and_overrides():
    train = [row("c1", "Classify the sentiment of this review: great food and friendly staff", "positive",
                 "classification"),
             row("c2", "Classify the sentiment of this review: cold soup, rude waiter, never again", "negative",
                 "classification")] + _headline_rows("s", HEADLINES)
    limits = filters.derive(train, Curate(max_response_tokens=5))
    assert limits["classification"].min_response == 1 and limits["classification"].min_passage == 0
    assert limits["summarization"].min_response >= 2 and limits["summarization"].max_response == 5
    assert limits["classification"].max_instruction == 64  # 3x the longest (12 words), at least 64


def test_answers_made_of_symbols_pass_the_derived_bounds():
    """A task answered in symbols (star ratings) has answers of 0 words in the normal form: the bound
    derived from its train rows admits the teacher's answers in the same form (a floor of 1 word dropped
    78 of 117 on the development data's ratings), and a blank answer is still `empty`."""
    train = [row(f"t{i}", f"Rate this review: the soup was {w}.", "★" * (1 + i % 5), "classification")
             for i, w in enumerate(["cold", "fine", "good", "great", "perfect", "bland"])]
    limits = filters.derive(train, Curate())
    assert limits["classification"].min_response == 0
    new = [row("stars", "Rate this review: the bread was stale.", "★★", "classification"),
           row("blank", "Rate this review: the tea was hot.", "  ", "classification")]
    kept, removed, _ = curate.curate(new, train, [], Curate(), thresholds=limits)
    assert [r["id"] for r in kept] == ["stars"] and [r["reason"] for r in removed] == ["empty"]


def test_a_templates_fixed_text_is_not_test_overlap_but_what_test_rows_say_is():
    """A task written from one template shares its fixed text with every row, test rows included: an n-gram
    that train holds too is not a leak (the development data's star ratings lost 96 of 156 candidates to
    it); an n-gram only a test row holds still removes the pair, in curation and in a re-split."""
    template = "Given this review: {} Would you recommend this app to a friend? Not at all, No, Maybe, Yes, or Definitely?"
    train = [row(f"tr{i}", template.format(text), ans, "classification") for i, (text, ans) in enumerate(
        [("Works fine on my old phone every single day, the widgets load fast and the battery barely notices it "
          "even with sync switched on all afternoon", "Yes"),
         ("Crashes all the time since the last update whenever I open a shared folder from the email link, support "
          "never answered my three messages about it", "No")])]
    test = [row("te0", template.format("The dark theme saved my eyes during late night reading sessions in bed"),
                "Definitely", "classification")]
    fresh = row("new", template.format("Syncs my notes between the tablet and laptop quickly, though the search box "
                                       "misses words with accents and the export to PDF loses all of my pictures"),
                "Maybe", "classification")
    leak = row("leak", template.format("The dark theme saved my eyes during late night reading sessions in bed too"),
               "Definitely", "classification")
    kept, removed, report = curate.curate([fresh, leak], train, test, Curate(**FIXED))
    assert [r["id"] for r in kept] == ["new"]
    assert [(r["id"], r["reason"]) for r in removed] == [("leak", "test_ngram_overlap")]
    assert report["test_ngrams_shared_with_train"] > 0
    # without train rows the template's own words make every pair a "leak": what went wrong before
    _, removed, _ = curate.curate([fresh], [], test, Curate(**FIXED))
    assert [r["reason"] for r in removed] == ["test_ngram_overlap"]
    kept, removed = curate.decontaminate([fresh, leak], test, 13, train=train)
    assert [r["id"] for r in kept] == ["new"] and removed == {"test_ngram_overlap": 1}
