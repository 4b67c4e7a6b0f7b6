"""Where is an object's position lost? Ridge probes (held-out R^2) of the centre (x, y) of the one object in
a scene, from the ViT's embeddings, its last layer and the connector's output (what the decoder reads):
  all tokens  every image token flattened: position readable from WHICH tokens carry the object (token order)
  own token   only the token of the patch under the object's centre (LLaVA): position inside that token's
              VALUE, the only way a decoder attending to the object (values carry no RoPE) can read it
    python scripts/probe_position.py MODEL_DIR   (a LLaVA or Qwen-VL export)"""
import sys, numpy as np, torch
import ocellus
from ocellus.data.shapes import ShapesConfig, make_scene, render

def feats(d, n=1200):
    model, proc = ocellus.load(d).eval(), ocellus.load_processor(d)
    cfg = ShapesConfig(image_size=48, min_objects=1, max_objects=1)
    rng = np.random.default_rng(0)
    X0, XL, XC, y, own = [], [], [], [], []
    for i in range(n):
        scene = make_scene(rng, cfg)
        o = scene.objects[0]
        x0, y0, x1, y1 = o.bbox
        y.append([(x0 + x1) / 2, (y0 + y1) / 2])
        grid = 48 // model.vision_tower.config.patch_size
        own.append(int((y0 + y1) / 2 // (48 // grid)) * grid + int((x0 + x1) / 2 // (48 // grid)))
        pix = proc.image_inputs([render(scene)])[0]["pixel_values"]
        with torch.no_grad():
            vt = model.vision_tower
            hs = vt(pix, output_hidden_states=True).hidden_states
            X0.append(hs[0].flatten()); XL.append(hs[-1].flatten())
            XC.append(model.image_features(pix).flatten())
    return [torch.stack(v).double() for v in (X0, XL, XC)], torch.tensor(y).double(), torch.tensor(own), model

def own_token(X, own, per, offset):
    """the row of the object's own patch token out of flattened [N, T*D] features (T tokens of D)."""
    X = X.view(len(X), -1, per)
    return X[torch.arange(len(X)), own + offset]

def r2(X, y, lam=0.01):
    n = len(X) // 2 * 3 // 2 if False else int(len(X) * 0.75)
    mu, sd = X[:n].mean(0), X[:n].std(0) + 1e-6
    Xs = (X - mu) / sd
    A = Xs[:n]; w = torch.linalg.solve(A.T @ A + lam * len(A) * torch.eye(A.shape[1], dtype=A.dtype), A.T @ (y[:n] - y[:n].mean(0)))
    pred = Xs[n:] @ w + y[:n].mean(0)
    return (1 - ((pred - y[n:]) ** 2).sum(0) / ((y[n:] - y[n:].mean(0)) ** 2).sum(0)).tolist()

(X0, XL, XC), y, own, model = feats(sys.argv[1])
dv = model.vision_tower.config.hidden_size
for name, X, per in (("embeddings", X0, dv), ("last layer", XL, dv), ("connector out", XC, None)):
    line = f"{name:14s} all tokens R^2 (x, y): {[round(v, 3) for v in r2(X, y)]}"
    tokens = X.shape[1] // per if per else None
    if per is None and getattr(model, "feature_select", None) == "full" and X.shape[1] % 17 == 0:
        per, tokens = X.shape[1] // 17, 17
    if per and tokens == 17:   # CLS + 16 patches: the patch under the centre is token own + 1
        line += f"   own token R^2 (x, y): {[round(v, 3) for v in r2(own_token(X, own, per, 1), y)]}"
    print(line)
