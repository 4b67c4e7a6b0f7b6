"""Feed-forward blocks. SwiGLU (Shazeer 2020): down(act(gate(x)) * up(x)) with SiLU, as in
Llama/Qwen2; GeluMLP: fc2(gelu(fc1(x))) as in ViT/BERT/GPT-2. Names follow transformers."""
import math

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError

# transformers' ACT2FN names, each computed as its class does (gelu_fast / gelu_accurate are its own tanh formulas);
# the learned ones (prelu, xielu) are not here
ACTIVATIONS = {
    "silu": F.silu, "swish": F.silu, "gelu": F.gelu, "gelu_python": F.gelu, "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_python_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_accurate": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3)))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu2": lambda x: F.relu(x).square(), "relu6": F.relu6, "leaky_relu": F.leaky_relu,
    "mish": F.mish, "hardswish": F.hardswish, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(), "linear": lambda x: x,
    "laplace": lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107).div(0.282095 * math.sqrt(2.0)))),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class SwiGLU(nn.Module):
    # x -> gate|up [..., 2 * hidden] in one call while infer/prepack.py holds both as one packed matrix (the
    # decode default on CPU); None: two Linear calls
    fused_gate_up = None

    def __init__(self, dim: int, hidden: int, bias: bool = False, act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x):
        if self.fused_gate_up is not None:
            gate, up = self.fused_gate_up(x).chunk(2, dim=-1)                    # [..., hidden] views
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
