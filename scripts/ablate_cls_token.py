"""Does a LLaVA decoder read the asked object's own image tokens, or the CLS summary? Answers shapes-vqa with
the CLS image token intact, then replaced by the batch's mean CLS (it no longer says which classes this image
holds), and prints accuracy per question type for both (docs/VLM_COMPARISON.md, session 9).
    python scripts/ablate_cls_token.py MODEL_DIR [N]   (a LLaVA export with feature_select: full)"""
import collections
import sys

import ocellus
from ocellus.eval.harness import predict, task_samples

model, processor = ocellus.load(sys.argv[1]).eval(), ocellus.load_processor(sys.argv[1])
samples = task_samples("shapes-vqa", int(sys.argv[2]) if len(sys.argv) > 2 else 200, 48)
intact = model.image_features


def ablated(pixel_values):
    feats = intact(pixel_values).clone()                  # [N, 1 + P, D]: CLS first (feature_select full)
    feats[:, 0] = feats[:, 0].mean(0, keepdim=True)
    return feats


for name, features in (("intact", intact), ("CLS ablated", ablated)):
    model.image_features = features
    right = collections.defaultdict(list)
    for sample, pred in zip(samples, predict(model, processor, samples, [], 8)):
        right[sample["type"]].append(pred.strip().lower() == str(sample["answer"]).lower())
    print(f"{name:12s}", {t: round(100 * sum(v) / len(v), 1) for t, v in sorted(right.items())})
