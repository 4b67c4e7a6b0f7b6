"""Decode tokens/s of Ocellus vs transformers `generate` on a random ~100M Llama, with this
machine's ceiling. Same as `ocellus bench decode`; see ocellus/bench.py.

    python benchmarks/decode.py                      # fp32 + bf16, batch 1 and 8
    python benchmarks/decode.py --dtypes bf16 --batches 1 --quick
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ocellus.bench import main_decode  # noqa: E402

if __name__ == "__main__":
    main_decode(sys.argv[1:])
