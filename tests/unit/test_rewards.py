"""Reward functions and answer extraction, including adversarial completions."""

import json
from fractions import Fraction

import pytest

from conftest import SHARED_DATA
from posttrain.verifiers import answers, rewards

GSM8K = SHARED_DATA / "gsm8k_train_1000.jsonl"


def score(name, completions, **columns):
    spec = {"name": name, **columns.pop("options", {})}
    return rewards.build(spec)([[{"role": "user", "content": "q"}]] * len(completions), completions, **columns)


# --- numbers and final answers -----------------------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("1,000", 1000), ("$5", 5), ("5.0", 5), ("-3", -3), ("3/4", Fraction(3, 4)), ("\\frac{3}{4}", Fraction(3, 4)),
    ("42.", 42), ("12 apples", 12), ("$1,234.50", Fraction(246900, 200)), ("50%", 50), ("\u22127", -7),
])
def test_parse_number(text, value):
    assert answers.parse_number(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1/0", "3 4", "1,00", None])
def test_parse_number_rejects(text):
    assert answers.parse_number(text) is None


@pytest.mark.parametrize("text,expected", [
    ("12 + 7 = 19", "19"),
    ("Jack has 55 and gives 23. 55 - 23 = 32.\n#### 32", "32"),
    ("So the total is \\boxed{\\frac{3}{4}} units, from 1 and 2.", "\\frac{3}{4}"),
    ("The answer is 17. I counted 3 boxes.", "17"),
    ("<think>Maybe 8? 5+3 is 8.</think> The answer is 9", "9"),
    ("<think>5 + 3 = 8</think>", None),                      # the number only inside reasoning
    ("<think>5 + 3 = 8 and then", None),                     # reasoning never closed
    ("", None), ("no numbers here", None),
])
def test_final_answer(text, expected):
    assert answers.final_answer(text) == expected


def test_answer_tag_wins_and_is_required():
    assert answers.final_answer("7 then <answer>8</answer> and 9", answer_tag="answer") == "8"
    assert answers.final_answer("the answer is 8", answer_tag="answer") is None


def test_same_answer():
    assert answers.same_answer("$1,000.00", "1000")
    assert answers.same_answer("0.75", "3/4")
    assert not answers.same_answer("1000.5", "1000")
    assert answers.same_answer("Paris.", "paris")
    assert not answers.same_answer(None, "1") and not answers.same_answer("1", None)
    assert not answers.same_answer("", "")


# --- accuracy --------------------------------------------------------------------------------


def test_accuracy_reward_adversarial():
    completions = [
        "12 + 7 = 19\n#### 19",                                   # right
        "<think>12 + 7 = 19</think> So it is 20.",                # right number only in reasoning
        "Is it 19? Maybe. I think the answer is 18.",             # mentions 19, commits to 18
        "",                                                      # empty
        "The answer is $19.00.",                                 # formatting differs, value equal
        "19 or 20 or 21",                                        # hedging: the last number counts
        "It is 19.",                                             # no gold for this row
    ]
    got = score("accuracy", completions, answer=["19"] * 6 + [None])
    assert got == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, None]


def test_marked_only_accuracy_and_the_marked_answer_reward():
    """Strict scoring, as the evaluation's `#### N` match: a right number in passing is no answer."""
    completions = ["12 + 7 = 19\n#### 19", "12 + 7 = 19", "The answer is 19.", "#### N", "12 + 7 = 20\n#### 20", ""]
    assert score("accuracy", completions, answer=["19"] * 6,
                 options={"marked_only": True}) == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert score("marked_answer", completions) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert answers.final_answer("<think>#### 19</think> maybe 20", marked_only=True) is None
    # Spamming marks is a hedge: several different `#### N` give no answer (the same one repeated is fine).
    assert score("accuracy", ["#### 42\n#### 19\n#### 19", "#### 19\n#### 19"], answer=["19", "19"],
                 options={"marked_only": True}) == [0.0, 1.0]
    assert score("marked_answer", ["#### 42\n#### 19", "#### 19"]) == [0.0, 1.0]


@pytest.mark.parametrize("text,expected", [
    ("162 - 56 = 106.\n#### 106", [(106, 106)]),
    ("10 x 2 = 20, 4 × 3 = 12 and 6 * 7 = 42", [(20, 20), (12, 12), (42, 42)]),
    ("3 + 4 × 2 = 11", [(11, 11)]),            # products first, as arithmetic is read
    ("58 + 33 = 81.", [(91, 81)]),
    ("1.5 + 2 = 3.5; 2 - 5 = -3", [(Fraction(7, 2), Fraction(7, 2)), (-3, -3)]),
    ("8 / 0 = 1", [(None, 1)]),
    ("90 + 6 = 96.#### 96", [(96, 96)]),
    ("10 jars * 4 ribbons = 40 ribbons; 12 = 12; the answer is 7", []),  # no calculation stated
])
def test_stated_calculations(text, expected):
    assert [(c.value, c.stated) for c in answers.calculations(text)] == expected


def test_calculation_reward_scores_the_arithmetic_of_the_problem():
    prompt = [{"role": "user", "content": "Tom has 162 apples, gives 56 away and then gets 3 more. How many?"}]
    completions = [
        "162 - 56 = 106. 106 + 3 = 109.\n#### 109",   # both steps right, the second from a stated result
        "162 - 56 = 116. 116 + 3 = 119.\n#### 119",   # the first wrong, the second right from it
        "162 - 56 + 3 = 109\n#### 109",
        "2 + 2 = 4. 162 - 56 = 106.",                   # a sum about nothing in the problem earns nothing
        "He has 109 apples.\n#### 109",                # no calculation stated
        "162 - 56 = 106",                               # a row without a gold answer
    ]
    fn = rewards.build({"name": "calculation"})
    golds = ["109"] * 5 + [None]
    assert fn([prompt] * 6, completions, answer=golds) == [1.0, 0.5, 1.0, 0.5, 0.0, None]
    loose = rewards.build({"name": "calculation", "from_prompt": False})
    assert loose([prompt] * 6, completions, answer=golds)[3] == 1.0
    assert fn(["Tom has 162 and gives 56."], ["162 - 56 = 106"], answer=["106"]) == [1.0]  # prompts as text


def test_setup_reward_scores_the_set_up_whatever_the_sum():
    prompt = [{"role": "user", "content": "Oscar started with 41 stamps, got 12 and used up 14. What number remain?"}]
    completions = [
        "41 + 12 - 14 = 39.\n#### 39",               # set up and summed right
        "41 + 12 - 14 = 36.\n#### 36",               # set up right, the sum wrong
        "41 + 12 + 14 = 67.\n#### 67",               # the sum right, an operation wrong
        "41 + 12 = 50. 50 - 14 = 36.\n#### 36",      # chained: the first step wrong, the set-up right
        "41 + 12 = 53. 53 + 14 = 67.\n#### 67",      # chained, an operation wrong
        "40 - 1 = 39.\n#### 39",                     # numbers the problem does not have
        "Oscar has 39 stamps left.\n#### 39",        # no calculation
        "41 + 12 - 14 = 39",                          # a row without a gold answer
    ]
    fn = rewards.build({"name": "setup"})
    golds = ["39"] * 7 + [None]
    assert fn([prompt] * 8, completions, answer=golds) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, None]
    assert fn(["A box of 12 cards is shared by 0 and 3 friends."], ["12 / 0 = 4. 4 x 3 = 12"], answer=["12"]) == [0.0]
    # with `calculation` it ranks the right operation above the easy one when the sum is wrong either way
    both = rewards.combine([{"name": "setup", "weight": 1.0}, {"name": "calculation", "weight": 0.5}])
    wrong_sum, easy_op = both([prompt] * 2, completions[1:3], answer=golds[:2])
    assert wrong_sum > easy_op


def test_accuracy_reward_conversational_completions_and_gsm8k_gold():
    completions = [[{"role": "assistant", "content": "That makes 72.\n#### 72"}]]
    assert score("accuracy", completions, answer=["Natalia sold 48/2 = 24 clips...\n#### 72"]) == [1.0]


def test_accuracy_on_real_gsm8k_solutions():
    rows = [json.loads(line) for line in open(GSM8K)]
    golds = [r["answer"].split("####")[-1].strip() for r in rows]
    fn = rewards.build({"name": "accuracy"})
    prompts = [[{"role": "user", "content": r["question"]}] for r in rows]
    assert fn(prompts, [r["answer"] for r in rows], answer=golds) == [1.0] * len(rows)
    # Each solution scored against the next row's answer: right only when the answers coincide.
    shifted = golds[1:] + golds[:1]
    got = fn(prompts, [r["answer"] for r in rows], answer=shifted)
    coincide = sum(answers.same_answer(a, b) for a, b in zip(golds, shifted))
    assert sum(got) == coincide < 50


# --- format, refusal, constraint, length -----------------------------------------------------


def test_format_reward():
    got = score("format", ["<think>add them</think> 19", "19", "<think></think> 19", "<think>add</think>",
                           "<think>a</think> 19 <think>b</think> 20", "  <think>\nadd\n</think>\n\n#### 19\n"])
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    tagged = rewards.build({"name": "format", "answer_tag": "answer"})
    assert tagged([None, None], ["<think>x</think><answer>19</answer>", "<think>x</think> 19"]) == [1.0, 0.0]
    custom = rewards.build({"name": "format", "think_tag": "reasoning"})
    assert custom([None], ["<reasoning>x</reasoning> 19"]) == [1.0]


def test_refusal_reward_adversarial():
    completions = [
        "I can't help with that. It could hurt people.",                                       # refuses harmful
        "I'm sorry, but I can't help with that. But here's how: 1. Buy the parts\n2. Mix them",  # refuses, complies
        "Sure! Here are the steps to make it.",                                                # complies harmful
        "",                                                                                    # empty
        "I can't help with that.",                                                             # over-refuses benign
        "To kill a Python process, run `kill PID`.",                                            # answers benign
        "I can't help with that.",                                                             # no expectation
    ]
    got = score("refusal", completions, expect=["refuse"] * 4 + ["comply", "comply", None])
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None]


def test_refusal_with_redirect_is_still_a_refusal():
    text = "I can't help with that. If you are struggling, you could talk to a counsellor."
    assert score("refusal", [text], expect=["refuse"]) == [1.0]


def test_constraint_reward():
    got = score("constraint", ["one two three", "one two", "anything"],
                constraint=[{"type": "word_count", "n": 3}, {"type": "word_count", "n": 3}, None])
    assert got == [1.0, 0.0, None]


def test_length_penalty():
    got = score("length", ["a " * 10, "a " * 15, "a " * 40], options={"max_words": 10})
    assert got == [0.0, -0.5, -1.0]


def test_repetition_penalty_costs_loops_not_lists():
    plain = "1. Math\n2. Science\n3. History"
    loop = "1. 1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1"
    got = score("repetition", [plain, loop, "ok", "the cat sat and the cat sat"], options={"ngram": 3})
    assert got[0] == 0.0 and got[2] == 0.0
    assert got[1] < -0.8
    assert got[3] == pytest.approx(-1 / 5)  # 5 trigrams, the last repeats the first
    assert score("repetition", [loop], options={"max_penalty": 0.5})[0] == pytest.approx(got[1] / 2)
    with pytest.raises(ValueError, match="ngram"):
        rewards.build({"name": "repetition", "ngram": 0})


# --- building ----------------------------------------------------------------------------------


def test_combine_weights_and_none():
    fn = rewards.combine([{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.5}])
    got = fn([None] * 3, ["<think>x</think> 19", "19", "<think>x</think> 5"], answer=["19", None, "19"])
    assert got == [1.5, 0.0, 0.5]
    only_none = rewards.combine([{"name": "accuracy"}])
    assert only_none([None], ["19"], answer=[None]) == [None]
    assert fn.__name__ == "accuracy+format"


def test_build_errors_name_what_exists():
    with pytest.raises(ValueError, match="unknown reward function 'acuracy'.*accuracy"):
        rewards.build({"name": "acuracy"})
    with pytest.raises(ValueError, match="no option.*'tag'.*allowed"):
        rewards.build({"name": "format", "tag": "x"})
    with pytest.raises(ValueError, match="at least one"):
        rewards.combine([])
