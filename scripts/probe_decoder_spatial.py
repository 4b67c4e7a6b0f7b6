"""Is a spatial answer gathered by the decoder and not read out, or never gathered? Linear probes (held-out) on
the decoder's hidden state at the position that predicts the answer, layer by layer, for "which side" spatial
questions ("Is the A to the left or to the right of the B?"): the answer (logistic), and the centre x / y of
A and of B (ridge R^2).
    python scripts/probe_decoder_spatial.py MODEL_DIR [N]      (a LLaVA-style export; N questions, default 1200)"""
import re
import sys

import numpy as np
import torch

import ocellus
from ocellus.data.shapes import ShapesConfig, sample_at
from ocellus.eval.harness import EVAL_SEED


def samples(n: int) -> list[dict]:
    cfg = ShapesConfig(image_size=48, seed=EVAL_SEED, qa_weights=(("spatial", 1.0), ("count", 1e-9)))
    out, i = [], 0
    while len(out) < n:
        s = sample_at(cfg, i, "qa")
        i += 1
        if s["type"] == "spatial" and s["answer"] in ("left", "right", "above", "below"):
            out.append(s)
    return out


def centre(sample: dict, name: str) -> list[float]:
    o = next(o for o in sample["objects"] if f"{o['colour']} {o['shape']}" == name)
    x0, y0, x1, y1 = o["bbox"]
    return [(x0 + x1) / 2, (y0 + y1) / 2]


@torch.inference_mode()
def hidden(model, processor, batch_samples: list[dict]) -> list[torch.Tensor]:
    states = []
    hooks = [layer.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.language_model.layers]
    convs = [[m for m in s["messages"] if m["role"] == "user"] for s in batch_samples]
    batch = processor(messages=convs, images=[list(s["images"]) for s in batch_samples])
    model(**batch)
    for h in hooks:
        h.remove()
    last = batch["attention_mask"].sum(1) - 1 if processor_pads_right(batch) else None
    idx = last if last is not None else torch.full((len(batch_samples),), batch["input_ids"].shape[1] - 1)
    return [s[torch.arange(len(batch_samples)), idx] for s in states]


def processor_pads_right(batch) -> bool:
    mask = batch["attention_mask"]
    return bool((mask[:, -1] == 0).any())


def ridge_r2(X, y, split):
    Xtr, Xte, ytr, yte = X[:split], X[split:], y[:split], y[split:]
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    w = np.linalg.solve(Xtr.T @ Xtr + 10.0 * np.eye(X.shape[1]), Xtr.T @ (ytr - ytr.mean(0)))
    pred = Xte @ w + ytr.mean(0)
    return 1 - ((pred - yte) ** 2).sum(0) / ((yte - yte.mean(0)) ** 2).sum(0)


def main(model_dir: str, n: int = 1200) -> None:
    model, processor = ocellus.load(model_dir).eval(), ocellus.load_processor(model_dir)
    data = samples(n)
    feats = None
    for start in range(0, n, 32):
        hs = hidden(model, processor, data[start:start + 32])
        feats = [h.double() for h in hs] if feats is None else [torch.cat([f, h.double()]) for f, h in zip(feats, hs)]
    names = [re.search(r"the (\w+ \w+) (?:to the left or to the right of|above or below) the (\w+ \w+)\?",
                       str([m for m in s["messages"] if m["role"] == "user"])).groups() for s in data]
    a = np.array([centre(s, na) for s, (na, _) in zip(data, names)])
    b = np.array([centre(s, nb) for s, (_, nb) in zip(data, names)])
    horizontal = np.array([s["answer"] in ("left", "right") for s in data])
    label = np.array([s["answer"] in ("left", "above") for s in data], dtype=float)
    split = int(0.7 * n)
    print(f"{n} 'which side' questions ({horizontal.mean():.0%} left/right), probes fit on {split}, scored on the rest")
    print("layer | answer (logistic acc) | x of A R^2 | x of B R^2 | y of A | y of B | x_A - x_B R^2")
    for k, f in enumerate(feats):
        X = f.numpy()
        r2a, r2b = ridge_r2(X, a, split), ridge_r2(X, b, split)
        diff = ridge_r2(X, (a - b)[:, :1], split)[0]
        Xs = np.hstack([X, horizontal[:, None]])   # the probe knows the axis asked
        acc = logistic_acc(Xs, label, split)
        print(f"{k + 1} | {acc:.3f} | {r2a[0]:.2f} | {r2b[0]:.2f} | {r2a[1]:.2f} | {r2b[1]:.2f} | {diff:.2f}")


def logistic_acc(X, y, split, steps=500):
    Xt = torch.tensor(X)
    mu, sd = Xt[:split].mean(0), Xt[:split].std(0) + 1e-6
    Xt = (Xt - mu) / sd
    yt = torch.tensor(y)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b0 = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b0], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt[:split] @ w + b0, yt[:split]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return float(((Xt[split:] @ w + b0 > 0).double() == yt[split:]).double().mean())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1200)
