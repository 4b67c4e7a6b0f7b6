"""Caption metrics: corpus BLEU (Papineni et al. 2002) and CIDEr-D (Vedantam et al. 2015), as
computed by the coco-caption toolkit (github.com/tylin/coco-caption, pip `pycocoevalcap`:
`bleu/bleu_scorer.py`, `cider/cider_scorer.py`), which is where published captioning numbers
come from. Re-implemented here; the tests compare with pycocoevalcap and nltk when installed.

Tokenization. coco-caption first runs the Stanford PTB tokenizer (Java) with lower-casing and
then drops punctuation tokens (. , ? ! : ; - -- ... ' `` '' and brackets); the scorers then split
on whitespace. `tokenize_caption` approximates that pipeline in pure Python: lower-case, split
the clitics PTB splits ("dog's" -> "dog 's", "don't" -> "do n't"), delete sentence punctuation,
quotes and brackets (keeping "3.5" and "1,000" whole), split on whitespace, drop tokens made
only of dashes/apostrophes. It agrees with PTB on ordinary captions; for bit-exact coco numbers
on unusual text, run the PTB tokenizer yourself and pass `tokenize=False` (whitespace split).

Both metrics take the whole corpus at once: BLEU sums n-gram statistics over the corpus before
dividing, and CIDEr-D's idf is computed from the references of the corpus being scored.
"""

import math
import re
from collections import Counter
from dataclasses import dataclass

from ocellus.errors import InputError

# PTB splits these clitics off the word before them; coco-caption keeps them as tokens.
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
# Periods, commas and colons go, except inside a number ("3.5", "1,000", "10:30").
_SENTENCE_PUNCT = re.compile(r"(?<!\d)[.,:]|[.,:](?!\d)")
_OTHER_PUNCT = re.compile(r"[?!;\"()\[\]{}`]")
_JUNK_TOKEN = re.compile(r"^[-']+$")  # "-", "--", "'" on their own (removed by coco-caption)


def tokenize_caption(text: str) -> list[str]:
    """Lower-cased word tokens, approximating coco-caption's PTB tokenizer + punctuation removal.

    >>> tokenize_caption("A dog's frisbee, in the park.")
    ['a', 'dog', "'s", 'frisbee', 'in', 'the', 'park']
    """
    if not isinstance(text, str):
        raise InputError(f"caption must be a str, got {type(text).__name__}: {text!r}")
    text = _CLITIC.sub(r" \1", text.lower())
    text = _OTHER_PUNCT.sub(" ", _SENTENCE_PUNCT.sub(" ", text))
    return [t for t in text.split() if not _JUNK_TOKEN.match(t)]


def _prepare(hypotheses, references, tokenize):
    """Check the corpus shape and tokenize: one hypothesis and >= 1 references per image."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise InputError("hypotheses must be a list of str and references a list of lists of str")
    if len(hypotheses) != len(references):
        raise InputError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists "
                         "(need one list of references per hypothesis)")
    if not hypotheses:
        raise InputError("the corpus is empty: need at least one hypothesis")
    split = tokenize_caption if tokenize else str.split
    hyps, refs = [], []
    for i, (h, rs) in enumerate(zip(hypotheses, references)):
        if not isinstance(h, str):
            raise InputError(f"hypothesis {i} must be a str, got {type(h).__name__}: {h!r}")
        if isinstance(rs, str) or not rs or not all(isinstance(r, str) for r in rs):
            raise InputError(f"references[{i}] must be a non-empty list of str, got {rs!r}")
        hyps.append(split(h))
        refs.append([split(r) for r in rs])
    return hyps, refs


def _ngrams(tokens: list[str], n: int) -> Counter:
    """Counts of the n-grams of exactly length n."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# --- BLEU ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BleuScore:
    bleu: float                      # BLEU-max_n (BLEU-4 by default)
    cumulative: tuple[float, ...]    # BLEU-1 .. BLEU-max_n, coco-caption's Bleu_1..Bleu_4
    precisions: tuple[float, ...]    # corpus modified n-gram precisions p_1 .. p_max_n
    brevity_penalty: float
    hyp_len: int                     # c: total hypothesis length
    ref_len: int                     # r: total effective reference length


def corpus_bleu(hypotheses: list[str], references: list[list[str]], max_n: int = 4,
                tokenize: bool = True) -> BleuScore:
    """Corpus-level BLEU (Papineni et al. 2002) as coco-caption computes it.

    p_n = sum over sentences of clipped n-gram matches / sum of hypothesis n-gram counts, where a
    hypothesis n-gram's count is clipped to its largest count in any one reference of that image.
    BP = 1 if c > r else exp(1 - r / c), with c the total hypothesis length and r the sum over
    sentences of the reference length *closest* to the hypothesis length (ties -> the shorter
    one), coco-caption's "closest" option (nltk's corpus_bleu does the same).
    BLEU-N = BP * exp(mean_{n<=N} log p_n).

    Differences from coco-caption, both only where a count is zero: coco adds 1e-15 / 1e-9 to
    numerators / denominators, so a corpus with no matching 4-gram gets a tiny positive BLEU-4
    (~1e-5) where we return exactly 0.0; and nltk divides by max(1, count) per sentence, so it
    differs from both for hypotheses shorter than n words.
    """
    if max_n < 1:
        raise InputError(f"max_n must be >= 1, got {max_n}")
    hyps, refs = _prepare(hypotheses, references, tokenize)
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, rs in zip(hyps, refs):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            max_ref_counts = Counter()
            for r in rs:
                max_ref_counts |= _ngrams(r, n)  # Counter | Counter keeps the max of each count
            counts = _ngrams(hyp, n)
            matches[n - 1] += sum(min(c, max_ref_counts[g]) for g, c in counts.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    precisions = [m / t if t else 0.0 for m, t in zip(matches, totals)]
    if hyp_len == 0:
        bp = 0.0
    else:
        bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    cumulative = []
    for n in range(1, max_n + 1):
        ps = precisions[:n]
        # The geometric mean is 0 as soon as one precision is 0 (log 0 = -inf).
        cumulative.append(0.0 if min(ps) == 0.0 else bp * math.exp(sum(map(math.log, ps)) / n))
    return BleuScore(bleu=cumulative[-1], cumulative=tuple(cumulative),
                     precisions=tuple(precisions), brevity_penalty=bp,
                     hyp_len=hyp_len, ref_len=ref_len)


# --- CIDEr-D ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CiderScore:
    score: float                     # mean over images (coco-caption's "CIDEr")
    per_image: tuple[float, ...]


def cider_d(hypotheses: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0,
            tokenize: bool = True) -> CiderScore:
    """CIDEr-D (Vedantam et al. 2015, sec. 4 and the CIDEr-D variant), as coco-caption's
    `cider_scorer.py` computes it (coco-caption reports this under the name "CIDEr").

    For each n-gram order k = 1..n a sentence becomes a tf-idf vector g_k:
        g_k(w) = count of w in the sentence * log(I / max(1, df(w)))
    where I is the number of images in the corpus and df(w) the number of images whose
    *reference set* contains w (an n-gram absent from all references counts as df = 1).
    For a candidate c and the m references s_j of its image:
        CIDEr-D_k = 10/m * sum_j exp(-(l_c - l_sj)^2 / (2 sigma^2))
                               * sum_w min(g_k(c)(w), g_k(s_j)(w)) * g_k(s_j)(w)
                               / (||g_k(c)|| * ||g_k(s_j)||)
        CIDEr-D   = mean_k CIDEr-D_k
    with l the length in words; the min() is the clipping that stops repeated words from
    gaming the score, the Gaussian the length penalty; a cosine with a zero vector counts 0.
    The corpus score is the mean over images.

    Consequences worth knowing: with a single image every idf is log(1/1) = 0, so CIDEr-D is 0
    for any candidate; an n-gram in every image's references has idf 0 and adds nothing;
    scores are not bounded by 1 (10 x cosine, so a perfect match is at most ~10).
    (coco-caption measures l as the number of bigrams, i.e. words - 1; the difference in
    lengths is the same unless a sentence is empty, and then its vector is 0 anyway.)
    """
    if n < 1 or sigma <= 0:
        raise InputError(f"need n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
    hyps, refs = _prepare(hypotheses, references, tokenize)

    def all_ngrams(tokens):
        counts = Counter()
        for k in range(1, n + 1):
            counts.update(_ngrams(tokens, k))
        return counts

    ref_counts = [[all_ngrams(r) for r in rs] for rs in refs]
    doc_freq = Counter()
    for counts_of_image in ref_counts:
        doc_freq.update(set().union(*counts_of_image))  # each image counts once per n-gram
    log_images = math.log(len(refs))

    def tfidf(counts):
        """Per order k: {ngram: weight} and the vector's L2 norm."""
        vecs = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vecs[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vecs]
        return vecs, norms

    per_image = []
    for hyp, rs, rcounts in zip(hyps, refs, ref_counts):
        h_vecs, h_norms = tfidf(all_ngrams(hyp))
        total = 0.0
        for r, rc in zip(rs, rcounts):
            r_vecs, r_norms = tfidf(rc)
            penalty = math.exp(-((len(hyp) - len(r)) ** 2) / (2.0 * sigma ** 2))
            for k in range(n):
                if h_norms[k] == 0.0 or r_norms[k] == 0.0:
                    continue
                # Clipped dot product: a candidate weight never counts above the reference's.
                dot = sum(min(w, r_vecs[k].get(g, 0.0)) * r_vecs[k].get(g, 0.0)
                          for g, w in h_vecs[k].items())
                total += penalty * dot / (h_norms[k] * r_norms[k])
        per_image.append(10.0 * total / (n * len(rs)))
    return CiderScore(score=sum(per_image) / len(per_image), per_image=tuple(per_image))
