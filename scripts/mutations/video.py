"""Video end to end (issue 22 item 4): decoding and limits (data/video_file.py), Qwen2-VL's video path through the
processor (data/video.py, data/processor.py, models/families/qwen2_vl/processor.py), the slot cache's M-RoPE deltas
(infer/slot_cache.py), the server's video_url parts (serve/), the moving-shapes generator (data/shapes_video.py)
and the video recipe's training encoding (train/tasks/vlm.py)."""
from mutations import Mutation

FILES = "tests/unit/test_video_file.py"
PARITY = "tests/parity/test_qwen2_vl_video_processor.py"
SERVE = "tests/serve/test_video.py"
GENERATOR = "tests/unit/test_shapes_video.py"
RECIPE = "tests/unit/test_qwen2_vl_video_recipe.py::test_video_recipe_trains_exports_and_evaluates"

MUTATIONS = [
    Mutation(name="video: fps sampling ignores the clip's own frame rate", file="ocellus/data/video.py",
             old="video_fps=video.fps if s.do_sample_frames else None",
             new="video_fps=None", tests=[PARITY]),
    Mutation(name="video: a checkpoint's videos take the image processor's pixel budget",
             file="ocellus/models/families/qwen2_vl/processor.py",
             old="video = video_processor_dict(directory) or pre", new="video = pre", tests=[PARITY]),
    Mutation(name="video: each video's pads counted one short", file="ocellus/data/processor.py",
             old="k = next(next_clip)", new="k = next(next_clip) - 1", tests=[PARITY, SERVE]),
    Mutation(name="video: the slot cache drops a row's M-RoPE delta", file="ocellus/infer/slot_cache.py",
             old="self.deltas.append(int(prefilled.rope_deltas[row]) if prefilled.rope_deltas is not None else 0)",
             new="self.deltas.append(0)", tests=[FILES, SERVE]),
    Mutation(name="video: a removed row's slot keeps its old delta", file="ocellus/infer/slot_cache.py",
             old="self.deltas[i] = self.deltas[last]", new="self.deltas[last] = self.deltas[i]", tests=[FILES]),
    Mutation(name="video: frames decoded past max_frames", file="ocellus/data/video_file.py",
             old="limits.check_count(label, index + 1)   # frame max_frames + 1 exists: stop before decoding it",
             new="pass", tests=[FILES]),
    Mutation(name="video: the encoded-size limit is not applied", file="ocellus/serve/media.py",
             old="if size > limits.max_video_bytes:", new="if size > limits.max_video_bytes * 1000:", tests=[SERVE]),
    Mutation(name="video: video parts accepted in any conversation", file="ocellus/data/messages.py",
             old='kind == "image" or (kind == "video" and videos)', new='kind in ("image", "video")',
             tests=[FILES]),
    Mutation(name="video: ocellus chat --video is read but never sent", file="ocellus/cli.py",
             old="pending_videos = [_load_video(session, path) for path in videos]",
             new="pending_videos = [_load_video(session, path) for path in videos][:0]",
             tests=[SERVE + "::test_cli_chat_video_flag_and_command"]),
    Mutation(name="video: the leftward / upward path starts where the rightward one does",
             file="ocellus/data/shapes_video.py",
             old="+ (sweep if dx + dy < 0 else 0)", new="+ 0", tests=[GENERATOR]),
    Mutation(name="video: 'up' moves the shape down", file="ocellus/data/shapes_video.py",
             old='"up": (0, -1)', new='"up": (0, 1)', tests=[GENERATOR]),
    Mutation(name="video: training writes video placeholders with the image token", file="ocellus/train/tasks/vlm.py",
             old="images_tokens=counts, image_token=proc.video_token,",
             new="images_tokens=counts, image_token=proc.image_token,", tests=[RECIPE]),
]
