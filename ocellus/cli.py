"""The `ocellus` command: demo | generate | chat | explain | serve | bench.

Each subcommand is a few lines that parse arguments and call the library (three hops at most
from here to a tensor op): generate -> infer.generate.stream -> DecoderLM.forward (or VLM.forward
with images); chat -> chat.ChatSession.send -> stream; explain -> viz.attention_map.explain.

stdout carries a command's output (the answer, the chat replies, eval's table, a benchmark's table); messages
(progress, what was written where, warnings) go through the `ocellus` loggers, which configure_logging here (the
one place: the library configures no handler) sends to stderr at --log-level / -v / -q / $OCELLUS_LOG_LEVEL.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ocellus.errors import ConfigError, InputError, OcellusError

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # = ocellus.data.image.DEFAULT_MAX_PIXELS (not imported: keeps startup light)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
log = logging.getLogger(__name__)


class _MessageFormatter(logging.Formatter):
    """info: the message as the commands printed it before; other levels: 'warning: ...'."""
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def configure_logging(level: str | None) -> str:
    """The CLI's logging: the `ocellus` loggers to stderr at `level` (the flag), else $OCELLUS_LOG_LEVEL, else
    info (what the commands showed before they logged). -> the level."""
    name = (level or os.environ.get("OCELLUS_LOG_LEVEL") or "info").strip().lower()
    if name not in LOG_LEVELS:
        raise ConfigError(f"OCELLUS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {name!r}")
    reset_logging()
    logger = logging.getLogger("ocellus")
    handler = logging.StreamHandler(sys.stderr)
    handler.ocellus_cli = True
    handler.setFormatter(_MessageFormatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(name.upper())
    return name


def reset_logging() -> None:
    """Undo configure_logging (main calls it on the way out: a command run in-process, as the tests do, leaves
    no handler on a stream that is gone)."""
    logger = logging.getLogger("ocellus")
    for old in [h for h in logger.handlers if getattr(h, "ocellus_cli", False)]:
        logger.removeHandler(old)
    logger.setLevel(logging.NOTSET)


def _add_logging(p: argparse.ArgumentParser) -> None:
    """--log-level / -v / -q on the top parser and on every command (before or after the command's name);
    SUPPRESS: a command's parser leaves a level given before its name alone."""
    p.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="messages shown on stderr (default: $OCELLUS_LOG_LEVEL, else info); serve: uvicorn's too")
    p.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                   default=argparse.SUPPRESS, help="--log-level debug")
    p.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="warning",
                   default=argparse.SUPPRESS, help="--log-level warning: warnings and errors only")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--num-beams", type=int, default=1,
                   help="beam search over N beams (chat: each reply printed whole once the search ends)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def _generation_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop_strings=tuple(args.stop), prepack=args.prepack)


def _one_line(e: Exception) -> str:
    return f"ocellus: error: {type(e).__name__}: " + " ".join(str(e).split())


def _prompt_inputs(proc, prompt: str, images: list[str], raw: bool):
    """(tokenizer, input_ids [1, T], extra prefill inputs) for one prompt and its images."""
    import torch

    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.data.processor import Processor

    if not isinstance(proc, Processor):  # a text-only checkpoint: its Tokenizer
        if images:
            raise ConfigError("--image needs a vision-language checkpoint: this one has no image processor config "
                              "(preprocessor_config.json / processor_config.json)")
        text = prompt
        if not raw and proc.chat_template:
            text = proc.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return proc, torch.tensor([proc.encode(text, add_special_tokens=raw or not proc.chat_template)]), {}
    if raw or not proc.chat_template:
        # no template: LLaVA's plain layout, images first, unless the prompt places them itself
        text = prompt if proc.image_token in prompt else f"{proc.image_token}\n" * len(images) + prompt
        batch = proc(text=text, images=images)
    else:
        parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        batch = proc(messages=[{"role": "user", "content": parts}], images=images)
    extra = {k: batch[k] for k in ("pixel_values", "image_sizes") if k in batch}  # image inputs, at prefill
    return proc.tokenizer, batch["input_ids"], extra


def _load_model(path, args):
    """ocellus.load (decoding packs the weights for oneDNN on CPU unless --no-prepack: infer/prepack.py)."""
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    import ocellus
    return ocellus.load(path, dtype=args.dtype, quantize=args.quantize)   # --quantize int8: nn/quant.py


def cmd_generate(args) -> int:
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    import ocellus
    from ocellus.infer.generate import models_generate, stream
    from ocellus.infer.stop_text import reply_stops

    model = _load_model(args.model, args)
    processor = ocellus.load_processor(args.model)
    tok, ids, extra = _prompt_inputs(processor, args.prompt, args.image, args.raw)
    kw = {**_generation_kwargs(args), "stop_strings": reply_stops(processor, args.stop)}   # the template's too
    if args.num_beams > 1:   # beam search ends each hypothesis before a stop string itself (infer/beam.py)
        # the model's own generate: it refuses what it cannot beam-search (Qwen2-VL's packed patches, ...)
        out = models_generate(model)(ids, tokenizer=tok, num_beams=args.num_beams, **kw, **extra)
        print(tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
        return 0
    for delta in stream(model, tok, ids, **kw, **extra):
        print(delta, end="", flush=True)
    print()
    return 0


CHAT_HELP = ("commands: /image PATH, /video PATH (attach to your next message; videos: animated GIF / APNG / WebP "
             "or a directory of frames, for video models), /reset (clear history), /quit")


def cmd_chat(args) -> int:
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    import ocellus
    from ocellus.chat import ChatSession
    from ocellus.models.unified.checkpoint import is_unified_dir

    model_dir = args.model if args.model is not None else ocellus.default_model_dir()
    if is_unified_dir(model_dir):   # Emu3 / Janus / Show-o / SEED: describes attached images, "draw ..." saves a PNG
        return chat_loop(_unified_chat(args, model_dir), args.image)
    model = _load_model(model_dir, args)
    generation = {**_generation_kwargs(args), "max_new_tokens": 256 if args.max_new_tokens is None else args.max_new_tokens}
    session = ChatSession(model, ocellus.load_processor(model_dir), system=args.system,
                          max_pixels=args.max_image_pixels, max_video_frames=args.max_video_frames,
                          **generation, num_beams=args.num_beams)   # beams: each reply whole, at its end
    return chat_loop(session, args.image, args.video)


def _unified_chat(args, model_dir: str):
    """`ocellus chat` over a unified model: --seed seeds its drawing, --temperature (> 0) and --top-k set the
    drawing's sampling, --max-new-tokens a caption's length; a flag it cannot honour is refused, naming it, before
    the model loads (its chat captions and draws with its own decoding, one turn at a time, images only)."""
    from ocellus.chat import UnifiedChat
    from ocellus.models.unified.checkpoint import load_unified
    refused = {f"--num-beams {args.num_beams}": args.num_beams > 1, "--top-p": args.top_p is not None,
               "--min-p": args.min_p is not None, "--repetition-penalty": args.repetition_penalty is not None,
               "--stop": bool(args.stop), "--system": args.system is not None, "--video": bool(args.video),
               "--dtype": args.dtype is not None, "--quantize": args.quantize is not None,
               "--no-prepack": not args.prepack}
    refused = [flag for flag, given in refused.items() if given]
    if refused:
        raise ConfigError(f"{', '.join(refused)}: {model_dir} is a unified model, whose chat captions and draws with "
                          f"its own decoding (it takes --seed, --temperature, --top-k, --max-new-tokens, --image, "
                          f"--max-image-pixels); beam search and the others are for vision-language and text models")
    sampling = {k: v for k, v in (("temperature", args.temperature if args.temperature > 0 else None),
                                  ("top_k", args.top_k)) if v is not None}
    return UnifiedChat(load_unified(model_dir), out_dir=".", seed=0 if args.seed is None else args.seed,
                       caption_tokens=args.max_new_tokens, max_pixels=args.max_image_pixels, **sampling)


def chat_loop(session, images=(), videos=()) -> int:
    """Read user turns from stdin until EOF or /quit; stream each reply to stdout. Interactive (a
    terminal) shows a prompt; piped input is read line by line, each line one user turn. A bad
    --image ends the command before any turn (exit 2, naming the file); a later error (bad /image,
    a conversation that fills the context, ...) prints one line to stderr, the session goes on, and
    the exit status is 2 at the end."""
    interactive = sys.stdin.isatty()
    pending = [session.load_image(path) for path in images]  # images (loaded and checked) for the next user turn
    pending_videos = [_load_video(session, path) for path in videos]   # decoded and checked, likewise
    errors = 0

    def report(e: OcellusError) -> None:
        nonlocal errors
        errors += 1
        print(_one_line(e), file=sys.stderr)

    if interactive:
        print(f"ocellus chat: {CHAT_HELP}", file=sys.stderr)
    while True:
        try:  # input() gives line editing on a terminal; it drops the newline, so put one back
            line = input("> ") + "\n" if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            line = ""
        if not line:  # EOF (an empty line reads as "\n")
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                session.reset()
                pending.clear()
                pending_videos.clear()
                print("(history cleared)", file=sys.stderr)  # stdout carries only replies
            elif command == "/image" and argument.strip():
                try:
                    pending.append(session.load_image(argument.strip()))
                except OcellusError as e:
                    report(e)
            elif command == "/video" and argument.strip():
                try:
                    pending_videos.append(_load_video(session, argument.strip()))
                except OcellusError as e:
                    report(e)
            elif command == "/help":
                print(CHAT_HELP, file=sys.stderr)
            else:
                report(InputError(f"unknown command {line!r}; {CHAT_HELP}"))
            continue
        turn_images, pending = pending, []
        turn_videos, pending_videos = pending_videos, []
        try:
            for delta in (session.send(line, turn_images, videos=turn_videos) if turn_videos
                          else session.send(line, turn_images)):
                print(delta, end="", flush=True)
            print()
        except OcellusError as e:
            report(e)
        except KeyboardInterrupt:  # stop this reply, keep the session (the turn is not kept)
            print(" [interrupted]")
    return 2 if errors else 0


def _load_video(session, path: str):
    if not hasattr(session, "load_video"):   # a unified model's chat reads images only
        raise ConfigError("this model's chat takes no videos")
    return session.load_video(path, name=f"video {path}")


def cmd_explain(args) -> int:
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    import ocellus
    from ocellus.viz.attention_map import explain

    model = ocellus.load(args.model, dtype=args.dtype)
    result = explain(model, ocellus.load_processor(args.model), args.image, args.prompt, out=args.out,
                     max_new_tokens=args.max_new_tokens, alpha=args.alpha)
    print(result.answer)
    rows, cols = result.grid.shape
    log.info(f"wrote {args.out}: attention of {len(result.answer_ids)} answer tokens over the {rows}x{cols} patch "
             f"grid, peak at patch (row {result.peak[0]}, col {result.peak[1]})")
    return 0


def cmd_demo(args) -> int:
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.demo import DEMO_SEED, run_demo
    run_demo(args.out, n_images=args.n, seed=DEMO_SEED if args.seed is None else args.seed, model_dir=args.model)
    return 0


def cmd_bench(args) -> int:
    try:  # every benchmark runs transformers on the same weights as the reference
        import transformers  # noqa: F401
    except ImportError as e:
        raise ConfigError("ocellus bench measures against transformers on the same weights, and transformers is "
                          "not installed: pip install 'ocellus[bench]'") from e
    if args.what == "decode":
        # lazy: a command imports only the code it runs (ocellus --help stays fast)
        from ocellus.bench import main_decode
        return main_decode(args.rest) or 0
    if args.what == "serve":
        # lazy: a command imports only the code it runs (ocellus --help stays fast)
        from ocellus.bench_serve import main_serve
        return main_serve(args.rest) or 0
    if args.what in ("encode", "train"):
        # lazy: a command imports only the code it runs (ocellus --help stays fast)
        from ocellus import bench_vlm
        return getattr(bench_vlm, f"main_{args.what}")(args.rest) or 0
    raise SystemExit(f"unknown benchmark {args.what!r}")


def cmd_train(args) -> int:
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.train.tasks import check_sources, load_recipe, run_recipe
    recipe = load_recipe(args.recipe, args.overrides)   # its task (train/tasks.TASKS) validates it
    check_sources(recipe, args.recipe)   # a missing checkpoint names the recipe that writes it, before any build
    run_recipe(recipe)
    return 0


def cmd_generate_image(args) -> int:
    from ocellus.models.generative.checkpoint import load_generator
    from ocellus.models.generative.sampling import prompt_conditions, sample_images
    from ocellus.viz.image_grid import save_grid

    model = load_generator(args.model)
    conditions, rows = prompt_conditions(model, args.prompt, args.n)
    gen = {k: v for k, v in (("steps", args.steps), ("guidance_scale", args.guidance_scale),
                             ("sampler", args.sampler), ("top_k", args.top_k)) if v is not None}
    path = save_grid(sample_images(model, conditions, gen, seed=args.seed), args.out, nrow=args.n)
    log.info(f"wrote {path} ({rows} row(s) x {args.n} samples)")
    return 0


def cmd_eval(args) -> int:
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.eval.harness import evaluate
    evaluate(args.model, args.task, n=args.n, shots=args.shots, batch_size=args.batch_size, out=args.out,
             phrasing=args.phrasing, turns=args.turns, card=args.card, quantize=args.quantize, progress=True,
             image_size=args.image_size)
    return 0


def cmd_serve(args) -> int:
    from pathlib import Path

    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.serve.app import serve
    from ocellus.serve.limits import ServeLimits
    limits = ServeLimits(
        api_key=ServeLimits.key_from_env(args.api_key), max_request_bytes=args.max_request_bytes,
        max_images=args.max_images, max_image_pixels=args.max_image_pixels, max_tokens=args.max_tokens,
        max_request_pixels=args.max_request_pixels, prompt_bytes_per_token=args.prompt_bytes_per_token,
        max_videos=args.max_videos, max_video_frames=args.max_video_frames, max_video_pixels=args.max_video_pixels,
        max_video_bytes=args.max_video_bytes, preprocess_concurrency=args.preprocess_concurrency,
        max_n=args.max_n, request_timeout_s=args.request_timeout, max_queue=args.max_queue, slots=args.slots,
        max_context=args.max_context, prefill_chunk=args.prefill_chunk or None,
        allow_http_images=args.allow_http_images,
        allowed_image_dir=Path(args.allow_image_dir) if args.allow_image_dir else None,
        allowed_hosts=tuple(args.allowed_host), idle_timeout_s=args.idle_timeout)
    serve(args.model, host=args.host, port=args.port, limits=limits, model_id=args.model_name, dtype=args.dtype,
          log_level=getattr(args, "log_level", None) or "info", quantize=args.quantize, prepack=args.prepack)
    return 0


def _add_prepack(p) -> None:
    p.add_argument("--no-prepack", dest="prepack", action="store_false",
                   help="CPU: decode with plain weights (default: oneDNN-prepacked fused weights, one copy in memory, "
                        "infer/prepack.py)")


def _add_quantize(p) -> None:
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8: the decoder's Linear layers as per-channel int8 weights (activations stay in --dtype; "
                        "needed to load a checkpoint saved quantized)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ocellus", description="Ocellus: multimodal LLMs in readable PyTorch.")
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("demo", help="the embedded model answers questions about new shapes images: answers next to "
                                    "the ground truth, the images and an attention heat map written to --out")
    p.add_argument("--out", default="ocellus-demo", help="folder for the images and the heat map")
    p.add_argument("--n", type=int, default=4, help="number of new images")
    p.add_argument("--seed", type=int, default=None, help="scene seed (default: one no recipe or eval uses)")
    p.add_argument("--model", default=None, help="a shapes VLM checkpoint (default: the embedded one)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="generate text from a checkpoint directory or hub id")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--image", action="append", default=[], help="image file for the prompt (repeatable)")
    p.add_argument("prompt")
    _add_sampling(p)
    _add_prepack(p)
    _add_quantize(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat (reads stdin; /image PATH, /reset, /quit)")
    p.add_argument("--model", default=None, help="checkpoint dir or hub id (default: the embedded shapes model)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--image", action="append", default=[], help="image for the first message (repeatable)")
    p.add_argument("--video", action="append", default=[],
                   help="video for the first message (repeatable): an animated GIF / APNG / WebP or a directory of "
                        "frames; for video models (Qwen2-VL)")
    p.add_argument("--max-video-frames", type=int, default=256, help="refuse videos with more frames")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="refuse larger images (decompression-bomb guard)")
    _add_sampling(p)
    _add_prepack(p)
    _add_quantize(p)
    p.set_defaults(func=cmd_chat, max_new_tokens=None)   # 256; a unified model: its caption length

    p = sub.add_parser("explain", help="answer a question about an image and draw which patches the answer "
                                       "attended to (a separate, slower analysis pass)")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="PNG to write (the image's size, heat map blended on)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity")
    p.add_argument("prompt")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("train", help="train from a YAML recipe: ocellus train RECIPE.yaml [key=value ...]")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=3e-4 data.n=2000")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model on a task: shapes-vqa | shapes-caption | shapes-grounding | digits "
                                    "| shapes-video (video models) | retrieval | zeroshot (CLIP/SigLIP) | linear-probe "
                                    "(any image tower)")
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True, choices=["shapes-vqa", "shapes-caption", "shapes-grounding", "digits",
                                                     "shapes-video", "retrieval", "zeroshot", "linear-probe"])
    p.add_argument("--n", type=int, default=200, help="held-out samples to score")
    p.add_argument("--shots", type=int, default=0, help="solved examples put before each question")
    p.add_argument("--phrasing", default="canonical", choices=["canonical", "plain", "us", "varied"],
                   help="shapes-vqa wording: as trained | no answer-format suffix | US spelling, no suffix | "
                        "the training paraphrases (shapes_phrasing.py)")
    p.add_argument("--turns", type=int, default=1, help="shapes-vqa: score the K-th question of a K-turn "
                                                         "conversation, the earlier ones answered by the model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=None, help="side of the rendered scenes in pixels (default: "
                   "the size the model trained on, recorded in its config.json, else its tower's input size)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--card", action="store_true", help="record the table in the model directory's model card "
                                                       "(README.md, written by a recipe's export)")
    _add_quantize(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate-image", help="sample an image generator (DDPM / latent diffusion / MaskGIT / "
                                              "autoregressive, text-to-image) into a PNG grid: --prompt 3 | circle | "
                                              "'all' | 'A red circle.|A blue star.'")
    p.add_argument("--model", required=True, help="a directory exported by an image_generation recipe")
    p.add_argument("--prompt", required=True, help="a class name, comma-separated names, or 'all'; a text-to-image "
                                                   "model: captions separated by '|'")
    p.add_argument("--n", type=int, default=8, help="samples per class (one row each)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (diffusion, MaskGIT)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance s (1 = none)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None)
    p.add_argument("--top-k", type=int, default=None, help="autoregressive models: top-k sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png")
    p.set_defaults(func=cmd_generate_image)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat completions with images, streaming, "
                                     "continuous batching) and a web chat page at /; see docs/SERVING.md")
    p.add_argument("--model", default=None, help="checkpoint dir (default: the embedded shapes model)")
    p.add_argument("--model-name", default=None, help="the id clients pass as `model` (default: the dir's name)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (or set $OCELLUS_API_KEY)")
    p.add_argument("--max-request-bytes", type=int, default=20 * 2**20, help="HTTP body cap (413 over it)")
    p.add_argument("--max-images", type=int, default=8, help="image parts per request")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="width*height cap, read from the header")
    p.add_argument("--max-request-pixels", type=int, default=4096 * 4096,
                   help="width*height summed over a request's images, from their headers before any is decoded")
    p.add_argument("--max-videos", type=int, default=2, help="video_url parts per request")
    p.add_argument("--max-video-frames", type=int, default=64,
                   help="frames of one video (counted while decoding: reading stops at the first frame over it)")
    p.add_argument("--max-video-pixels", type=int, default=64 * 640 * 480,
                   help="frames x width x height of one decoded video")
    p.add_argument("--max-video-bytes", type=int, default=8 * 2**20,
                   help="one encoded video (a data URL's payload, a file, an http body)")
    p.add_argument("--prompt-bytes-per-token", type=int, default=8,
                   help="text over this many bytes per context token is refused before tokenizing")
    p.add_argument("--preprocess-concurrency", type=int, default=2,
                   help="requests decoding images / tokenizing at the same time (bounds their memory)")
    p.add_argument("--max-tokens", type=int, default=1024, help="the most max_tokens a request may ask for")
    p.add_argument("--max-n", type=int, default=4, help="choices per request")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds from arrival to the last token")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--slots", type=int, default=16, help="requests decoded together (1 = one at a time)")
    p.add_argument("--max-context", type=int, default=None, help="tokens per slot (default: the model's context)")
    p.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens prefilled per engine step, between decode steps of the running requests "
                        "(chunked prefill; 0: each prompt whole)")
    p.add_argument("--allow-http-images", action="store_true", help="fetch http(s) image URLs (public hosts only)")
    p.add_argument("--allow-image-dir", default=None, help="accept file:// image URLs under this directory")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="a Host / Origin name to serve besides localhost and the bound address (repeatable; '*': any)")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="seconds a connection may take to send each request head (idle and slow clients are closed)")
    _add_prepack(p)
    _add_quantize(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="benchmarks: ours vs the reference, same run")
    p.add_argument("what", choices=["decode", "encode", "train", "serve"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (see `ocellus bench decode -h`)")
    p.set_defaults(func=cmd_bench)
    for p in (ap, *sub.choices.values()):
        _add_logging(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        # lazy: a command imports only the code it runs (ocellus --help stays fast)
        from ocellus import __version__
        print(__version__)
        return 0
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    try:
        args.log_level = configure_logging(getattr(args, "log_level", None))
        return args.func(args)
    except OcellusError as e:  # a user-caused problem: the message, not a traceback
        print(_one_line(e), file=sys.stderr)
        return 2
    finally:
        reset_logging()


if __name__ == "__main__":
    sys.exit(main())
