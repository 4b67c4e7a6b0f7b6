"""Evaluation metrics in pure Python: VQA accuracy (official normalisation, 10-human soft score,
counting), caption metrics (coco-caption BLEU and CIDEr-D), grounding (Qwen-VL box parsing,
IoU, acc@0.5) and a per-question-type breakdown with a text table.

    from ocellus.eval import vqa_soft_score, score_by_type, format_table
"""

from ocellus.eval.caption import BleuScore, CiderScore, cider_d, corpus_bleu, tokenize_caption
from ocellus.eval.grounding import (ParsedBox, grounding_accuracy, grounding_hit, iou,
                                    parse_boxes)
from ocellus.eval.metrics import format_table, score_by_type
from ocellus.eval.vqa import (count_match, counting_accuracy, normalize_vqa_answer, parse_count,
                              vqa_exact_match, vqa_soft_score)

__all__ = [
    "normalize_vqa_answer", "vqa_exact_match", "vqa_soft_score",
    "parse_count", "count_match", "counting_accuracy",
    "tokenize_caption", "corpus_bleu", "BleuScore", "cider_d", "CiderScore",
    "parse_boxes", "ParsedBox", "iou", "grounding_hit", "grounding_accuracy",
    "score_by_type", "format_table",
]
