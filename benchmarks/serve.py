"""Serving under load: the continuous-batching engine (chunked prefill included) against transformers' `generate`
one request at a time, on the ~100M Llama of `ocellus bench decode`. Same as `ocellus bench serve`; see
ocellus/bench_serve.py.

    python benchmarks/serve.py                   # 1 and 16 clients, a 2k-token prompt arriving mid-stream
    python benchmarks/serve.py --via server      # the load over HTTP against `ocellus serve`
    python benchmarks/serve.py --quick           # tiny model: checks that it runs
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ocellus.bench_serve import main_serve  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_serve(sys.argv[1:]))
