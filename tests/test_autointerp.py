"The entropy contract, full prompt snapshots, parsers, latent records and the null model's speed (randsae.entropy, .latents, .autointerp)."
import math

import numpy as np
import pandas as pd
import pytest
import torch

from randsae.entropy import token_entropy, normalized_token_entropy
from randsae.autointerp import (explainer_messages, fuzz_messages, detection_messages, fuzz_text, detection_text, parse_explanation,
                                parse_predictions, prob_one, records_from_arrays, null_model_scores, record_entropies, auroc_table)


# ---------------------------------------------------------------- entropy (the contract used outside this issue)

def test_token_entropy_contract():
    assert token_entropy(torch.tensor([4, 4, 4]), torch.tensor([1.0, 3.0, 0.5])) == 0.0                       # one token ID
    for n in (2, 3, 7):
        ids = torch.arange(n).repeat(3); acts = torch.full((3 * n,), 0.5)
        assert token_entropy(ids, acts) == pytest.approx(math.log(n), abs=1e-12)                               # equal mass over n IDs
    assert token_entropy(torch.tensor([1, 2, 3]), torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(math.log(2))  # zeros carry no mass
    assert isinstance(token_entropy(torch.tensor([1, 2]), torch.tensor([1.0, 1.0])), float)


@pytest.mark.parametrize("ids, acts, msg", [
    (torch.tensor([1, 2]), torch.tensor([1.0]), "equal lengths"),
    (torch.tensor([1, 2]), torch.tensor([1.0, -1.0]), ">= 0"),
    (torch.tensor([], dtype=torch.long), torch.tensor([]), "empty"),
])
def test_token_entropy_errors(ids, acts, msg):
    with pytest.raises(ValueError, match=msg): token_entropy(ids, acts)


def test_normalized_entropy_bounds():
    assert normalized_token_entropy(torch.tensor([9]), torch.tensor([1.0])) == 0.0
    assert normalized_token_entropy(torch.tensor([1, 2, 3]), torch.ones(3)) == pytest.approx(1.0)
    assert normalized_token_entropy(torch.tensor([1, 1, 2, 2]), torch.ones(4)) == pytest.approx(math.log(2) / math.log(4))


# ---------------------------------------------------------------- prompt snapshots (every character)

EXPLAINER_SYSTEM = """You are a careful researcher studying the features of a language model. You will be shown text examples in which the tokens where one feature is active are marked between the delimiters << and >>, like <<this>>; consecutive active tokens are marked together, <<like this>>. Below each example, a line starting with "Activations:" lists every marked token with how strongly the feature fires on it, on a scale from 0 to 10.

Guidelines:
- Describe in a short phrase what the marked tokens, and the text around them, have in common.
- Summarise the pattern instead of listing the marked tokens, unless the pattern is one or a few specific tokens.
- Do not mention the << and >> delimiters.
- Give a single explanation, not a list of possibilities.
- The last line of your reply must be the explanation, in the form
[EXPLANATION]: <explanation>"""

FUZZ_SYSTEM = """You are a careful researcher checking explanations of the features of a language model. You will be given the explanation of one feature, then text examples in which some tokens are marked between << and >>.

In some examples the marked tokens are the ones where the feature is active; in others they were chosen at random. An example is correctly marked only if every marked token fits the explanation. Any mix is possible: all, some or none of the examples may be correctly marked.

For each example in turn, answer 1 if it is correctly marked and 0 if it is not. Reply with a Python list of these answers, one per example, and nothing else."""

DETECTION_SYSTEM = """You are a careful researcher checking explanations of the features of a language model. You will be given the explanation of one feature, then several text examples. Decide for each example whether the feature described by the explanation is present in it.

For each example in turn, answer 1 if the feature is present and 0 if it is not. Reply with a Python list of these answers, one per example, and nothing else."""


def test_explainer_prompt_snapshot():
    msgs = explainer_messages([([" the", " cat", " sat"], [0.0, 4.0, 1.5]), ([" a", " dog"], [2.0, 0.5])], max_activation=4.0)
    assert msgs == [
        {"role": "system", "content": EXPLAINER_SYSTEM},
        {"role": "user", "content": 'Example 1: it rained all<< day>> and all<< night>>\nActivations: (" day", 9), (" night", 7)\n'
                                    'Example 2: we met again the next<< morning>>\nActivations: (" morning", 10)\n'
                                    'Example 3: see you on<< Friday>> then\nActivations: (" Friday", 4)'},
        {"role": "assistant", "content": "[EXPLANATION]: Words naming a time of day or a day of the week."},
        {"role": "user", "content": 'Example 1: He said<< that>> it was late\nActivations: (" that", 8)\n'
                                    'Example 2: I know<< that>> you tried\nActivations: (" that", 10)\n'
                                    'Example 3: so<< that>> we could leave\nActivations: (" that", 6)'},
        {"role": "assistant", "content": '[EXPLANATION]: The word "that", mostly introducing a clause.'},
        {"role": "user", "content": 'Example 1:  the<< cat sat>>\nActivations: (" cat", 10), (" sat", 3)\n'
                                    'Example 2: << a>> dog\nActivations: (" a", 5)'},
    ]


def test_fuzz_prompt_snapshot():
    msgs = fuzz_messages('The token " cat".', [fuzz_text([" the", " cat", " sat"], [False, True, False]),
                                               fuzz_text([" a", " big", " dog"], [False, True, True])])
    assert msgs == [
        {"role": "system", "content": FUZZ_SYSTEM},
        {"role": "user", "content": "Feature explanation: Words naming a time of day or a day of the week.\n\nText examples:\n\n"
                                    "Example 0: see you on<< Friday>> then\nExample 1: the<< cat>> sat on<< the>> mat\n"
                                    "Example 2: we met again the next<< morning>>\n"},
        {"role": "assistant", "content": "[1,0,1]"},
        {"role": "user", "content": 'Feature explanation: The word "that", mostly introducing a clause.\n\nText examples:\n\n'
                                    "Example 0: so<< that>> we could leave\nExample 1: the<< red>> car<< stopped>>\n"},
        {"role": "assistant", "content": "[1,0]"},
        {"role": "user", "content": 'Feature explanation: The token " cat".\n\nText examples:\n\n'
                                    "Example 0:  the<< cat>> sat\nExample 1:  a<< big dog>>\n"},
    ]


def test_detection_prompt_snapshot():
    msgs = detection_messages("Animals.", [detection_text([" the", " cat"])])
    assert msgs == [
        {"role": "system", "content": DETECTION_SYSTEM},
        {"role": "user", "content": "Feature explanation: Words naming a time of day or a day of the week.\n\nText examples:\n\n"
                                    "Example 0: see you on Friday then\nExample 1: the cat sat on the mat\n"
                                    "Example 2: we met again the next morning\n"},
        {"role": "assistant", "content": "[1,0,1]"},
        {"role": "user", "content": 'Feature explanation: The word "that", mostly introducing a clause.\n\nText examples:\n\n'
                                    "Example 0: so that we could leave\nExample 1: the red car stopped\n"},
        {"role": "assistant", "content": "[1,0]"},
        {"role": "user", "content": "Feature explanation: Animals.\n\nText examples:\n\nExample 0:  the cat\n"},
    ]


# ---------------------------------------------------------------- parsers: malformed replies are None, never a crash

@pytest.mark.parametrize("reply, expected", [
    ("thinking...\n[EXPLANATION]: Nouns for containers.", "Nouns for containers."),
    ("Explanation: the token 'of'", "the token 'of'"),
    ("I am not sure.", None), ("[EXPLANATION]:", None), (None, None), (b"[EXPLANATION]: x", None),
])
def test_parse_explanation(reply, expected):
    assert parse_explanation(reply) == expected


def test_parse_predictions_and_prob_one():
    assert parse_predictions("[0, 1]", 2) == [0, 1] and parse_predictions("[0, 1]", 3) is None and parse_predictions("{}", 1) is None
    assert prob_one({"1": math.log(0.3), "0": math.log(0.1)}) == pytest.approx(0.75)
    assert prob_one({}) is None


# ---------------------------------------------------------------- the tidy table and the null model

def test_auroc_table_columns_and_values():
    rec = records_from_arrays([1, 1, 1, 1], ["train", "test", "negative", "negative"],
                              [[1, 2, 3], [1, 5, 6], [7, 8, 9], [4, 4, 4]], [[3, 1, 0], [2, 0, 0], [0, 0, 0], [0, 0, 0]], variant="trained", layer=2)
    tbl = auroc_table(null_model_scores(rec), record_entropies(rec))
    assert {"variant", "layer", "latent", "explainer", "auroc", "entropy", "balanced_accuracy", "n_pos", "n_neg"} <= set(tbl.columns)
    assert (tbl.variant == "trained").all() and (tbl.layer == 2).all() and set(tbl.scorer) == {"fuzz", "detection"}
    assert tbl.auroc.tolist() == [1.0, 1.0] and tbl.n_pos.tolist() == [1, 1] and tbl.n_neg.tolist() == [2, 2]
    assert tbl.entropy.iloc[0] == pytest.approx(token_entropy(torch.tensor([1, 2, 3]), torch.tensor([3.0, 1.0, 0.0])))



# ---------------------------------------------------------------- latent records

def test_records_windows_splits_and_skipped():
    from randsae.latents import RecordConfig, build_records
    tokens = torch.randint(0, 50, (40, 18), generator=torch.Generator().manual_seed(0))     # 18 = 4 windows of 4 + 2 unused tokens
    rng = np.random.default_rng(0); n = 500
    pos, col = rng.choice(40 * 18, n, replace=False), rng.integers(0, 2, n)
    col[col == 1] = np.where(rng.random((col == 1).sum()) < 0.05, 1, 0)                   # latent 200 (column 1) is rare
    val = rng.random(n).astype(np.float32) + 0.01
    cfg = RecordConfig(n_latents=2, window_len=4, n_train=5, n_test=10, n_negative=5, n_quantiles=5, min_examples=20)
    rec = build_records(tokens, pos, col, val, [100, 200], cfg, variant="v", layer=0)
    ex = rec.examples
    assert rec.skipped.latent.tolist() == [200] and "fewer than min_examples=20" in rec.skipped.reason[0]
    assert (ex.start + 4 <= 16).all()                                                        # never past the last whole window
    assert np.array_equal(rec.tokens, np.stack([tokens[c, s:s + 4].numpy() for c, s in zip(ex.chunk, ex.start)]))
    tr = set(zip(ex[ex.split == "train"].chunk, ex[ex.split == "train"].start))
    te = set(zip(ex[ex.split == "test"].chunk, ex[ex.split == "test"].start))
    assert len(tr) == 5 and len(te) == 10 and not tr & te
    assert rec.activations[(ex.split == "negative").to_numpy()].sum() == 0
    assert (ex[ex.split == "test"]["quantile"].value_counts() == 2).all()                    # 10 test examples over 5 bins


# ---------------------------------------------------------------- calibration: a token-free latent scores 0.5

def test_null_fuzz_scorer_is_calibrated():
    "On 1,000 latents whose activations ignore the tokens the null model's AUROC is within 2 SE of 0.5; the old fixed mark count is not."
    from randsae.autointerp import null_calibration
    new = null_calibration(1000, "positive_draw").set_index("scorer")
    assert (new.n_latents == 1000).all() and (new.z_from_half.abs() < 2).all(), new
    old = null_calibration(1000, "ceil_mean").set_index("scorer")
    assert abs(old.z_from_half["fuzz"]) > 2, old


def test_train_types_and_cache_records():
    from randsae.latents import RecordConfig, TrainType, CacheRecordBuilder, usage_table
    from randsae.saes import SaeTrainConfig, initial_sae
    assert RecordConfig().train_type == TrainType.random and (RecordConfig().n_test, RecordConfig().min_examples) == (100, 200)
    sae = initial_sae(SaeTrainConfig(expansion_factor=4, k=8), 16).requires_grad_(False)
    tokens = torch.randint(0, 30, (40, 16), generator=torch.Generator().manual_seed(0))
    acts = torch.randn(40 * 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = RecordConfig(n_latents=5, window_len=4, n_train=4, n_test=8, n_negative=4, n_quantiles=4, min_examples=12)
    b = CacheRecordBuilder(sae, 40, 16, cfg)
    for s in range(0, 40, 8): b.update(acts[s * 16:(s + 8) * 16], s)
    rec = b.finish(tokens, variant="control", layer=0, seed=1)
    u = usage_table([rec]).iloc[0]
    assert u.num_latents == 64 and u.dead + u.alive == 64 and u.sampled == 5 and u.used + u.too_rare == 5 and rec.seed == 1
