"""Evaluation metrics: VQA normalisation and soft score, counting, BLEU, CIDEr-D, grounding,
per-type breakdown. Expected values are hand-computed (the arithmetic is in the comments), or
come from an independent re-implementation in this file, or from nltk / pycocoevalcap when
installed (skipped cleanly otherwise)."""
import math
import random

import numpy as np
import pytest

from ocellus.errors import InputError
from ocellus.eval import (ParsedBox, cider_d, corpus_bleu, count_match, counting_accuracy,
                          format_table, grounding_accuracy, grounding_hit, iou,
                          normalize_vqa_answer, parse_boxes, parse_count, score_by_type,
                          tokenize_caption, vqa_exact_match, vqa_soft_score)

# --- VQA normalisation ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),                              # number words -> digits
    ("none", "0"),
    ("eleven", "eleven"),                      # the official map stops at ten
    ("The dog.", "dog"),                       # article dropped, final period deleted
    ("an apple and a pear", "apple and pear"),
    ("Yes, it is", "yes it is"),               # ", " -> every comma deleted
    ("black-white", "black white"),            # not next to a space -> replaced by a space
    ("x = y", "x y"),                          # " =" -> deleted, whitespace collapses
    ("1,000", "1000"),                         # digit,digit -> all marks deleted
    ("3.5", "3.5"),                            # period before a digit is kept
    ("isnt", "isn't"),                         # contractions table
    ("whats up", "what's up"),
    ("Im", "im"),                              # official table's "Im" key cannot fire (lower-cased first)
    ("somebody'd", "somebodyd"),               # official oddity, kept
    ("\tYes\n", "yes"),
    ("x/y", "x y"),
    ("hello!", "hello"),                       # "!" replaced by a space, stripped by the split
    ("don't", "don't"),                        # apostrophes untouched
    ("10:30", "10:30"),                        # colons untouched
    ("." * 33 + "x", ".x"),                    # official quirk: at most 32 periods removed
])
def test_normalize_vqa_answer_official_rules(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_normalization_is_idempotent_on_normalized_answers():
    # Why gold answers may be normalised fully although the official script does not.
    rng = random.Random(0)
    atoms = list("ab .,;/-()?!'0123456789") + ["two", "The", "an", "isnt", "dont", "none", "1,2", "\t"]
    for _ in range(2000):
        s = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 12)))
        n = normalize_vqa_answer(s)
        assert normalize_vqa_answer(n) == n, s


def test_exact_match():
    assert vqa_exact_match("Two.", "2") == 1.0
    assert vqa_exact_match("the red one", "red 1") == 1.0
    assert vqa_exact_match("red", "red car") == 0.0
    with pytest.raises(InputError):
        vqa_exact_match(2, "2")


@pytest.mark.parametrize("k, expected", [
    (0, 0.0),
    (1, 0.3),   # 9 subsets contain the match: 9 * (1/3) / 10
    (2, 0.6),   # 2 subsets with 1 match, 8 with 2: (2/3 + 8 * 2/3) / 10
    (3, 0.9),   # 3 subsets with 2 matches, 7 with 3: (3 * 2/3 + 7) / 10
    (4, 1.0),
    (10, 1.0),
])
def test_soft_score_averages_over_ten_choose_nine(k, expected):
    golds = ["2"] * k + ["3"] * (10 - k)
    assert vqa_soft_score("two", golds) == pytest.approx(expected, abs=1e-12)


def test_soft_score_normalizes_both_sides_and_checks_input():
    golds = ["Two", "2", "two.", "3", "3", "3", "3", "3", "3", "3"]
    assert vqa_soft_score("2", golds) == pytest.approx(0.9)
    assert vqa_soft_score("a cat", ["cat"] * 5) == 1.0           # other counts than 10 work too
    assert vqa_soft_score("cat", ["cat"]) == 0.0                  # one human: nobody is left over
    with pytest.raises(InputError, match="non-empty list"):
        vqa_soft_score("cat", [])
    with pytest.raises(InputError, match="non-empty list"):
        vqa_soft_score("cat", "cat")


# --- counting ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("3", 3), ("There are 3 dogs.", 3), ("three dogs", 3), ("Twenty-one birds", 21),
    ("forty two", 42), ("none", 0), ("I see 2 cats and 5 dogs", 2), ("1,000 birds", 1000),
    ("3.0", 3), ("2.5", None), ("someone is often here", None), ("the 2nd one", 1),
    ("no idea", None), ("", None),
])
def test_parse_count(text, expected):
    assert parse_count(text) == expected


def test_counting_accuracy():
    preds = ["There are two.", "3", "many", "4 apples", "eleven"]
    golds = [2, "3", 1, "five", "11"]
    assert counting_accuracy(preds, golds) == pytest.approx(3 / 5)
    assert count_match("zero", 0) == 1.0
    with pytest.raises(InputError, match="holds no count"):
        count_match("3", "several")
    with pytest.raises(InputError, match="2 predictions but 1"):
        counting_accuracy(["1", "2"], [1])


# --- caption tokenization ------------------------------------------------------------------

def test_tokenize_caption():
    assert tokenize_caption("A man's dog, running -- fast!") == ["a", "man", "'s", "dog", "running", "fast"]
    assert tokenize_caption("He doesn't (really) care.") == ["he", "does", "n't", "really", "care"]
    assert tokenize_caption("3.5 feet, 1,000 birds at 10:30") == ["3.5", "feet", "1,000", "birds", "at", "10:30"]
    assert tokenize_caption("a black-and-white photo") == ["a", "black-and-white", "photo"]


# --- BLEU ----------------------------------------------------------------------------------

# Image 1: hyp 6 words, both refs 6 words.
#   1-grams 6/6; 2-grams a cat, cat sits, sits on (ref 1), on the, the mat (ref 2): 5/5;
#   3-grams a cat sits, cat sits on, on the mat match, sits on the does not: 3/4;
#   4-grams only "a cat sits on": 1/3.
# Image 2: hyp 3 words; closest ref length is 2 (|2-3| < |6-3|); 1/2/3-grams all in ref 1:
#   3/3, 2/2, 1/1, and no 4-grams (0/0).
# Corpus: p = (9/9, 7/7, 4/5, 1/3), c = 9 > r = 8 -> BP = 1, BLEU-4 = (0.8/3)^(1/4).
HYPS = ["a cat sits on the mat", "a dog runs"]
REFS = [["a cat sits on a mat", "the cat is on the mat"], ["a dog runs in the park", "dog running"]]


def test_bleu_hand_computed():
    s = corpus_bleu(HYPS, REFS)
    assert s.precisions == pytest.approx((1.0, 1.0, 0.8, 1 / 3))
    assert (s.hyp_len, s.ref_len, s.brevity_penalty) == (9, 8, 1.0)
    assert s.bleu == pytest.approx((0.8 / 3) ** 0.25, rel=1e-12)
    assert s.cumulative[:3] == pytest.approx((1.0, 1.0, 0.8 ** (1 / 3)))


def test_bleu_brevity_penalty_and_zero():
    s = corpus_bleu(["a cat sits on the"], [["a cat sits on the mat"]])
    assert s.precisions == (1.0, 1.0, 1.0, 1.0)
    assert s.bleu == pytest.approx(math.exp(1 - 6 / 5), rel=1e-12)       # BP = exp(1 - r/c)
    assert corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]]).bleu == 0.0  # no 4-gram
    assert corpus_bleu([""], [["a cat"]]).bleu == 0.0


def test_bleu_clips_counts_to_the_most_in_one_reference():
    # Papineni et al.'s example: "the" x7 against refs with "the" twice and once -> p1 = 2/7.
    s = corpus_bleu(["the the the the the the the"],
                    [["the cat is on the mat", "there is a cat on the mat"]], max_n=1)
    assert s.precisions == (2 / 7,) and s.bleu == pytest.approx(2 / 7, rel=1e-12)  # c = r = 7: BP = 1


def test_bleu_closest_reference_ties_go_to_the_shorter():
    # hyp 4 words, refs of 3 and 5 words: both 1 away -> r = 3 -> no penalty (c > r)
    assert corpus_bleu(["a b c d"], [["a b c", "a b c d e"]]).ref_len == 3


def _random_corpus(seed, n=25, min_len=4):
    rng = random.Random(seed)
    vocab = "a b c d e".split()  # tiny vocabulary so that 4-grams do match
    sent = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(min_len, 12)))
    return [sent() for _ in range(n)], [[sent() for _ in range(rng.randint(1, 5))] for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_matches_nltk(seed):
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    hyps, refs = _random_corpus(seed)  # every hyp >= 4 words: nltk's max(1, count) never kicks in
    ours = corpus_bleu(hyps, refs, tokenize=False)
    assert ours.bleu > 0.05
    for k in range(1, 5):
        theirs = bleu_score.corpus_bleu([[r.split() for r in rs] for rs in refs],
                                        [h.split() for h in hyps], weights=(1 / k,) * k)
        assert ours.cumulative[k - 1] == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_bleu_matches_coco_caption(seed):
    bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    hyps, refs = _random_corpus(seed, min_len=1)  # short hyps too: coco and we agree there
    theirs, _ = bleu.Bleu(4).compute_score({i: rs for i, rs in enumerate(refs)},
                                           {i: [h] for i, h in enumerate(hyps)}, verbose=0)
    ours = corpus_bleu(hyps, refs, tokenize=False)
    assert ours.bleu > 0 or seed == 3  # seed 3: no 4-gram matches anywhere in the corpus
    for k in range(4):
        if ours.cumulative[k] > 0:
            assert ours.cumulative[k] == pytest.approx(theirs[k], rel=1e-7)  # coco's 1e-9 epsilons
        else:  # documented difference: coco's 1e-15 numerator epsilon leaves a tiny positive score
            assert 0 < theirs[k] < 1e-4
    theirs, _ = bleu.Bleu(4).compute_score({0: REFS[0], 1: REFS[1]}, {0: [HYPS[0]], 1: [HYPS[1]]},
                                           verbose=0)
    assert corpus_bleu(HYPS, REFS).cumulative == pytest.approx(theirs, rel=1e-7)


def test_bleu_rejects_bad_shapes():
    with pytest.raises(InputError, match="2 hypotheses but 1"):
        corpus_bleu(["a", "b"], [["a"]])
    with pytest.raises(InputError, match=r"references\[0\] must be a non-empty list"):
        corpus_bleu(["a"], ["a"])          # a bare string would be read as characters
    with pytest.raises(InputError, match=r"references\[0\]"):
        corpus_bleu(["a"], [[]])


# --- CIDEr-D -------------------------------------------------------------------------------

def reference_cider_d(hyps, refs, n=4, sigma=6.0):
    """Independent re-implementation straight from Vedantam et al. 2015 (CIDEr-D), on dense
    numpy vectors over the corpus n-gram vocabulary: g = tf * log(I / max(1, df)),
    score_k = 10/m sum_j exp(-dl^2 / 2 sigma^2) min(g_c, g_sj) . g_sj / (|g_c| |g_sj|)."""
    toks = [h.split() for h in hyps], [[r.split() for r in rs] for rs in refs]
    grams = lambda t, k: [tuple(t[i:i + k]) for i in range(len(t) - k + 1)]
    total = []
    for k in range(1, n + 1):
        vocab = sorted({g for t in toks[0] for g in grams(t, k)} |
                       {g for rs in toks[1] for t in rs for g in grams(t, k)})
        index = {g: i for i, g in enumerate(vocab)}
        df = np.zeros(len(vocab))
        for rs in toks[1]:
            for g in {g for t in rs for g in grams(t, k)}:
                df[index[g]] += 1
        idf = np.log(len(refs)) - np.log(np.maximum(df, 1.0))

        def vec(t):
            v = np.zeros(len(vocab))
            for g in grams(t, k):
                v[index[g]] += 1
            return v * idf

        per_image = []
        for h, rs in zip(*toks):
            c, acc = vec(h), 0.0
            for r in rs:
                s = vec(r)
                denom = np.linalg.norm(c) * np.linalg.norm(s)
                cos = np.minimum(c, s) @ s / denom if denom > 0 else 0.0
                acc += math.exp(-(len(h) - len(r)) ** 2 / (2 * sigma ** 2)) * cos
            per_image.append(10.0 * acc / len(rs))
        total.append(per_image)
    return np.mean(total, axis=0)  # mean over k -> one score per image


def test_cider_d_hand_computed():
    # I = 2 images, every n-gram has df = 1 -> idf = ln 2 for all of them.
    # Image A: candidate == its only reference: cosine 1 for orders 1 and 2, orders 3-4 empty
    #   -> 10 * (1 + 1) / 4 = 5.
    # Image B: candidate "c" vs "c d": order 1 cosine = ln2^2 / (ln2 * sqrt2 ln2) = 1/sqrt2,
    #   length penalty exp(-(1-2)^2 / 72) -> 10 * exp(-1/72) / sqrt2 / 4.
    s = cider_d(["a b", "c"], [["a b"], ["c d"]])
    b = 10 * math.exp(-1 / 72) / math.sqrt(2) / 4
    assert s.per_image == pytest.approx((5.0, b), rel=1e-12)
    assert s.score == pytest.approx((5.0 + b) / 2, rel=1e-12)


def test_cider_d_clips_repeated_words():
    # Image B candidate "c c": order-1 weight 2 ln2 is clipped to the reference's ln2:
    #   min(2ln2, ln2) * ln2 / (2ln2 * sqrt2 ln2) = 1/(2 sqrt2); "c c" is not in the reference.
    #   Same length (2 = 2) -> no penalty -> 10 / (2 sqrt2) / 4. Unclipped would be twice that.
    s = cider_d(["a b", "c c"], [["a b"], ["c d"]])
    assert s.per_image[1] == pytest.approx(10 / (2 * math.sqrt(2)) / 4, rel=1e-12)


def test_cider_d_idf_zero_for_ngrams_in_every_image():
    # "a" is in both images' references: idf = ln(2/2) = 0, so a candidate made of it scores 0,
    # and a single-image corpus has idf 0 everywhere: CIDEr-D is 0 even for a perfect caption.
    assert cider_d(["a", "x"], [["a b"], ["a c"]]).per_image[0] == 0.0
    assert cider_d(["a dog on the grass"], [["a dog on the grass"] * 3]).score == 0.0


def test_cider_d_perfect_caption_scores_ten_and_highest():
    refs = [["a brown dog runs on grass"] * 2, ["two men ride red bikes"] * 2,
            ["a plate of fresh fruit salad"] * 2]
    perfect = [rs[0] for rs in refs]
    assert cider_d(perfect, refs).per_image == pytest.approx((10.0,) * 3, rel=1e-12)
    for worse in ["a brown dog runs on", "a brown dog runs on green grass", "brown a dog runs on grass",
                  "a brown dog dog runs on grass", "a dog"]:
        assert cider_d([worse] + perfect[1:], refs).per_image[0] < 10.0 - 1e-6, worse


@pytest.mark.parametrize("seed", [0, 1])
def test_cider_d_matches_independent_reimplementation(seed):
    rng = random.Random(seed)
    vocab = "a dog cat runs sits on the grass mat red".split()
    sent = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9)))
    hyps = [sent() for _ in range(12)]
    refs = [[sent() for _ in range(rng.randint(1, 5))] for _ in range(12)]
    ours = cider_d(hyps, refs, tokenize=False)
    expected = reference_cider_d(hyps, refs)
    assert ours.per_image == pytest.approx(tuple(expected), rel=1e-9, abs=1e-12)
    assert max(ours.per_image) > 0.5  # not a vacuous all-zero comparison


def test_cider_d_matches_coco_caption():
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = random.Random(5)
    vocab = "a dog cat runs sits on the grass mat red".split()
    sent = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9)))
    hyps, refs = [sent() for _ in range(15)], [[sent() for _ in range(5)] for _ in range(15)]
    score, per_image = cider.Cider().compute_score({i: r for i, r in enumerate(refs)},
                                                   {i: [h] for i, h in enumerate(hyps)})
    ours = cider_d(hyps, refs, tokenize=False)
    assert ours.per_image == pytest.approx(tuple(per_image), rel=1e-9, abs=1e-12)
    assert ours.score == pytest.approx(score, rel=1e-9)


# --- grounding -----------------------------------------------------------------------------

def test_parse_boxes_qwen_vl_format():
    text = ("The <ref>red circle</ref><box>(10,20),(300,400)</box> is left of "
            "<ref> two dogs </ref> <box>( 5 , 6 ) , ( 7 , 8 )</box><box>(0,0),(999,999)</box>.")
    assert parse_boxes(text) == [ParsedBox("red circle", (10, 20, 300, 400), None),
                                 ParsedBox("two dogs", (5, 6, 7, 8), None),
                                 ParsedBox("two dogs", (0, 0, 999, 999), None)]
    assert parse_boxes("<box>(1,2),(3,4)</box>") == [ParsedBox(None, (1, 2, 3, 4), None)]
    assert parse_boxes("no boxes here") == []
    qwen2 = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    assert parse_boxes(qwen2) == [ParsedBox("cat", (1, 2, 3, 4), None)]


@pytest.mark.parametrize("text, reason", [
    ("<ref>x</ref><box>(1,2),(3)</box>", "expected '(x1,y1),(x2,y2)'"),
    ("<box>(1.5,2),(3,4)</box>", "integer coordinates"),
    ("<box>(1,2),(3,1000)</box>", "coordinate 1000 outside [0, 1000)"),
    ("<box>(-1,2),(3,4)</box>", "coordinate -1 outside"),
    ("<box>(30,2),(3,4)</box>", "top-left then bottom-right"),
    ("<box>(1,2),(3,4)", "without </box>"),
])
def test_parse_boxes_malformed_gives_none_and_reason(text, reason):
    (p,) = parse_boxes(text)
    assert p.box is None and reason in p.reason


def test_malformed_box_does_not_hide_the_next_one():
    ps = parse_boxes("<ref>a</ref><box>(1,2),(3,4)<ref>b</ref><box>(5,6),(7,8)</box>")
    assert [p.box for p in ps] == [None, (5, 6, 7, 8)] and ps[1].ref == "b"


def test_iou_hand_computed():
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)  # 25 / (100 + 100 - 25)
    assert iou((0, 0, 10, 10), (0, 0, 5, 10)) == pytest.approx(0.5)        # contained: 50 / 100
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0                     # touching edges
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0                           # no area at all
    # invariant to scaling x and y by different factors (why [0,1000) space is fine)
    a, b = (12, 40, 300, 500), (100, 20, 420, 380)
    sa, sb = [(x * 0.64, y * 0.48, u * 0.64, v * 0.48) for x, y, u, v in (a, b)]
    assert iou(sa, sb) == pytest.approx(iou(a, b), rel=1e-12)
    with pytest.raises(InputError, match="x2 < x1"):
        iou((10, 0, 0, 10), (0, 0, 1, 1))
    with pytest.raises(InputError, match=r"\(x1, y1, x2, y2\)"):
        iou((0, 0, 1), (0, 0, 1, 1))


def test_grounding_accuracy_at_half():
    gold = (0, 0, 100, 100)
    preds = ["<ref>x</ref><box>(0,0),(100,100)</box>",   # IoU 1
             "<box>(0,0),(100,50)</box>",                 # IoU exactly 0.5 -> hit (>=)
             "<box>(0,0),(100,49)</box>",                 # IoU 0.49 -> miss
             "<box>(0,0),(100)</box><box>(0,0),(99,99)</box>",  # first well-formed box is used
             "I cannot find it.",                         # no box -> miss
             None,
             (50, 0, 150, 100)]                           # a box directly: 50*100 / 15000 -> miss
    assert grounding_accuracy(preds, [gold] * len(preds)) == pytest.approx(3 / 7)
    assert grounding_accuracy(preds, [gold] * len(preds), threshold=0.3) == pytest.approx(5 / 7)
    assert grounding_hit("<box>(0,0),(10,10)</box>", "<ref>a</ref><box>(0,0),(10,10)</box>") == 1.0
    with pytest.raises(InputError, match="holds no well-formed box"):
        grounding_hit("<box>(0,0),(10,10)</box>", "nothing")


# --- breakdown and table -------------------------------------------------------------------

RECORDS = [
    {"type": "yes/no", "pred": "Yes", "gold": "yes"},
    {"type": "yes/no", "pred": "no", "gold": "yes"},
    {"type": "number", "pred": "two", "gold": "2"},
    {"type": "other", "pred": "red", "gold": "red"},
    {"type": "yes/no", "pred": "yes", "gold": "yes"},
]


def test_score_by_type():
    scores = score_by_type(RECORDS, vqa_exact_match)
    assert scores == {"number": (1, 1.0), "other": (1, 1.0), "yes/no": (3, pytest.approx(2 / 3)),
                      "all": (5, pytest.approx(4 / 5))}     # "all" is the micro average
    assert list(scores) == ["number", "other", "yes/no", "all"]
    with pytest.raises(InputError, match="record 1 lacks \\['gold'\\]"):
        score_by_type([RECORDS[0], {"type": "a", "pred": "b"}], vqa_exact_match)
    with pytest.raises(InputError, match="reserved"):
        score_by_type([{"type": "all", "pred": "a", "gold": "a"}], vqa_exact_match)


def test_format_table_is_aligned():
    table = format_table(score_by_type(RECORDS, vqa_exact_match), score_name="acc")
    lines = table.splitlines()
    assert lines[0].split() == ["type", "|", "n", "|", "acc"]
    assert lines[2].split() == ["number", "|", "1", "|", "100.00"]
    assert lines[4].split() == ["yes/no", "|", "3", "|", "66.67"]
    assert lines[-1].split() == ["all", "|", "5", "|", "80.00"]
    assert set(lines[1]) == set(lines[-2]) == {"-", "+"}
    assert len({len(line) for line in lines}) == 1                 # every row as wide
    assert len({line.index("|") for line in lines if "|" in line}) == 1
