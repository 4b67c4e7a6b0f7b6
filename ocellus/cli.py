"""The `ocellus` command: demo | generate | bench.

Each subcommand is a few lines that parse arguments and call the library (three hops at most
from here to a tensor op): generate -> infer.generate.stream -> DecoderLM.forward.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ocellus.errors import OcellusError

DEFAULT_WORKDIR = Path(os.environ.get("OCELLUS_HOME", Path.home() / ".cache" / "ocellus"))


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def cmd_generate(args) -> int:
    import torch

    import ocellus
    from ocellus.infer.generate import generate, stream

    model = ocellus.load(args.model, dtype=args.dtype)
    tok = ocellus.load_processor(args.model)
    text = args.prompt
    if not args.raw and tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text, add_special_tokens=args.raw or not tok.chat_template)])
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0, temperature=args.temperature,
              top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
              seed=args.seed, stop_strings=tuple(args.stop))
    if args.num_beams > 1:
        out = generate(model, ids, tokenizer=tok, num_beams=args.num_beams, **kw)
        print(tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
        return 0
    for delta in stream(model, tok, ids, **kw):
        print(delta, end="", flush=True)
    print()
    return 0


def cmd_demo(args) -> int:
    from ocellus.demo import run_demo
    run_demo(args.workdir, args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed)
    return 0


def cmd_bench(args) -> int:
    if args.what == "decode":
        from ocellus.bench import main_decode
        return main_decode(args.rest) or 0
    raise SystemExit(f"unknown benchmark {args.what!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ocellus", description="Ocellus: multimodal LLMs in readable PyTorch.")
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("demo", help="build a tiny checkpoint and stream a reply through the whole pipeline")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR / "tiny-demo"))
    p.add_argument("--prompt", default="What is in the picture?")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="generate text from a checkpoint directory or hub id")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("prompt")
    _add_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="benchmarks: ours vs the reference, same run")
    p.add_argument("what", choices=["decode"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (see `ocellus bench decode -h`)")
    p.set_defaults(func=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        from ocellus import __version__
        print(__version__)
        return 0
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    try:
        return args.func(args)
    except OcellusError as e:  # a user-caused problem: the message, not a traceback
        print(f"ocellus: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
