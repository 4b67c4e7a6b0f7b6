"""Training from Hugging Face datasets (data/hf_dataset.py, docs/DATA_FORMATS.md): parquet / JSON lines /
save_to_disk arrow directories and a datasets.Dataset passed in Python, in the LLaVA format and TRL's formats
(messages + images; prompt / chosen / rejected + images; prompt-only + reward functions). The encoded samples
equal the same records read from LLaVA JSON (each image with its own record's text, whatever the row order),
`ocellus train` runs on them, and DPO / GRPO take their rows from parquet."""
import io
import json
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")

from ocellus.cli import main as cli_main  # noqa: E402
from ocellus.data.llava_json import write_llava_json  # noqa: E402
from ocellus.data.messages import from_llava, to_trl  # noqa: E402
from ocellus.data.shapes import ShapesConfig  # noqa: E402
from ocellus.errors import ConfigError, InputError  # noqa: E402
from ocellus.train.run import build_tokenizer  # noqa: E402
from ocellus.train.tasks import build_dataset, build_model, load_recipe, run_recipe  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALIGN = RECIPES / "llava_tiny_shapes" / "align.yaml"
N = 12
datasets.disable_progress_bars()


def _small(parts, out, *extra):
    return ["train.progress=false", "train.max_steps=2", "train.batch_size=4", "train.log_every=1",
            "train.warmup_steps=0", f"train.out_dir={out}", f"model.vision_from={parts}/vit/model",
            f"model.llm_from={parts}/text/model", f"tokenizer.from={parts}/text/model", "data.max_length=192", *extra]


@pytest.fixture(scope="module")
def llava_data(tmp_path_factory):
    """data.json (LLaVA, N shapes QA records + PNGs) and the same records as parquet: LLaVA format with image
    file names (rows shuffled), and TRL messages format with the images as an HF Image feature (bytes)."""
    root = tmp_path_factory.mktemp("hf")
    json_path = write_llava_json(root, ShapesConfig(seed=3), N, kind="qa")
    records = json.loads(json_path.read_text())
    order = [5, 2, 9, 0, 11, 7, 1, 10, 3, 8, 6, 4]                       # rows in another order than data.json
    datasets.Dataset.from_list([records[i] for i in order]).to_parquet(str(root / "llava.parquet"))
    from PIL import Image
    rows = [to_trl(from_llava(r).messages, [Image.open(root / r["image"]).convert("RGB")]) for r in records]
    messages = datasets.Dataset.from_dict({"id": [r["id"] for r in records], "messages": [r["messages"] for r in rows],
                                           "images": [r["images"] for r in rows]})
    (root / "messages").mkdir()
    messages.to_parquet(str(root / "messages" / "train-00000-of-00001.parquet"))
    return {"root": root, "json": json_path, "records": records, "order": order, "messages": messages}


@pytest.fixture(scope="module")
def built(tiny_vlm_parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_model")
    recipe = load_recipe(ALIGN, _small(tiny_vlm_parts, out))
    tok = build_tokenizer(recipe, out)
    return recipe, tok, build_model(recipe, tok)


def _dataset(built, **data):
    recipe, tok, model = built
    recipe = {**recipe, "data": {**recipe["data"], **data}}
    return build_dataset(recipe, tok, model)[0]


def _same(a, b):
    assert a["enc"].input_ids == b["enc"].input_ids and a["enc"].labels == b["enc"].labels
    assert set(a["images"]) == set(b["images"])
    for key in a["images"]:
        assert torch.equal(a["images"][key], b["images"][key])


def test_llava_and_messages_parquet_encode_as_the_llava_json_records(llava_data, built):
    reference = _dataset(built, source="llava_json", path=str(llava_data["json"]), n=N)
    llava = _dataset(built, source="hf", path=str(llava_data["root"] / "llava.parquet"))
    messages = _dataset(built, source="hf", path=str(llava_data["root"] / "messages"), format="messages")
    assert len(reference) == len(llava) == len(messages) == N
    for row, record in enumerate(llava_data["order"]):   # row `row` of the parquet is record `record` of data.json
        _same(llava[row], reference[record])
    for i in range(N):
        _same(messages[i], reference[i])
    # a test that can fail: the image of one record with the text of another is another sample
    first, second = reference[0], reference[1]
    assert first["enc"].input_ids != second["enc"].input_ids
    assert not torch.equal(first["images"]["pixel_values"], second["images"]["pixel_values"])


def test_jsonl_arrow_dir_and_a_given_dataset_read_the_same_rows(llava_data, built, tmp_path):
    reference = _dataset(built, source="llava_json", path=str(llava_data["json"]), n=N)
    root = llava_data["root"]
    datasets.Dataset.from_list(llava_data["records"]).to_json(str(root / "records.jsonl"))
    llava_data["messages"].save_to_disk(str(tmp_path / "arrow"))
    read = {"jsonl": _dataset(built, source="hf", path=str(root / "records.jsonl")),
            "arrow": _dataset(built, source="hf", path=str(tmp_path / "arrow"))}
    from ocellus.data.hf_dataset import given
    with given(datasets.DatasetDict({"train": llava_data["messages"].select(range(4))})):
        read["given"] = _dataset(built, source="hf", n=3)
    assert len(read["jsonl"]) == len(read["arrow"]) == N and len(read["given"]) == 3
    for name, ds in read.items():
        for i in range(len(ds)):
            _same(ds[i], reference[i])


def test_ocellus_train_runs_on_parquet_and_a_given_dataset(llava_data, tiny_vlm_parts, tmp_path):
    out = tmp_path / "cli"
    assert cli_main(["train", str(ALIGN), *_small(tiny_vlm_parts, out, "data.source=hf",
                                                   f"data.path={llava_data['root'] / 'llava.parquet'}")]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    out = tmp_path / "api"
    recipe = load_recipe(ALIGN, _small(tiny_vlm_parts, out, "data.source=hf"))
    assert run_recipe(recipe, dataset=llava_data["messages"]).is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ConfigError, match="data.path .*or a datasets.Dataset passed"):
        run_recipe(load_recipe(ALIGN, _small(tiny_vlm_parts, tmp_path / "none", "data.source=hf")))


def test_format_is_detected_from_the_columns():
    from ocellus.data.hf_dataset import detect_format
    assert detect_format(["id", "image", "conversations"]) == "llava"
    assert detect_format(["messages", "images"]) == "messages"
    assert detect_format(["prompt", "chosen", "rejected", "images"]) == "preference"
    assert detect_format(["chosen", "rejected"]) == "preference"
    assert detect_format(["prompt", "images", "answer"]) == "prompt"
    with pytest.raises(ConfigError, match=r"data.format: no known format fits the columns \['image', 'text'\]"):
        detect_format(["text", "image"])


def test_rows_keep_their_own_images_when_reordered_or_skipped(llava_data, tmp_path):
    """The reader alone (no model): each row's id, text and image stay together through a reordered view of a
    given dataset and through skipped bad rows."""
    from PIL import Image

    from ocellus.data.hf_dataset import given, read_conversations
    from ocellus.data.image import load_image
    root, records = llava_data["root"], llava_data["records"]
    view = [3, 1, 0, 2]
    with given(llava_data["messages"].select(view)):
        rows = read_conversations({"source": "hf"})
    for k, i in enumerate(view):
        assert rows[k]["id"] == records[i]["id"]
        assert rows[k]["messages"][0]["content"][-1]["text"] in records[i]["conversations"][0]["value"]
        own = Image.open(root / records[i]["image"]).convert("RGB")
        assert load_image(rows[k]["images"][0]).tobytes() == own.tobytes()
    bad = [dict(r) for r in records]
    bad[4]["image"], bad[7]["image"] = "images/nope.png", "../outside.png"
    datasets.Dataset.from_list(bad).to_parquet(str(tmp_path / "bad.parquet"))
    rows = read_conversations({"source": "hf", "path": str(tmp_path / "bad.parquet"), "image_root": str(root)},
                              skip_bad_samples=True)
    kept = [i for i in range(N) if i not in (4, 7)]
    assert [r["id"] for r in rows] == [records[i]["id"] for i in kept]
    assert [r["images"][0] for r in rows] == [root / records[i]["image"] for i in kept]
    assert [r["where"] for r in rows] == [f"row {i}" for i in kept]


def test_a_wrong_format_is_a_config_error(llava_data, built):
    with pytest.raises(ConfigError, match=r"data.format messages: the dataset has no column 'messages'"):
        _dataset(built, source="hf", path=str(llava_data["root"] / "llava.parquet"), format="messages")
    with pytest.raises(ConfigError, match=r"data.format preference: task vlm reads llava or messages rows"):
        _dataset(built, source="hf", path=str(llava_data["root"] / "llava.parquet"), format="preference")


def test_bad_rows_are_named_or_skipped_and_counted(llava_data, built, tmp_path):
    records = [dict(r) for r in llava_data["records"]]
    records[4]["image"] = "images/nope.png"
    records[7]["image"] = "../outside.png"
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(records).to_parquet(str(path))
    root = str(llava_data["root"])   # the images' directory, not the parquet file's
    with pytest.raises(InputError, match=r"bad.parquet, row 4: .*does not exist"):
        _dataset(built, source="hf", path=str(path), image_root=root)
    ds = _dataset(built, source="hf", path=str(path), image_root=root, skip_bad_samples=True)
    assert len(ds) == N - 2 and ds.bad_samples.counts() == {"image_outside_root": 1, "missing_image": 1}
    # an Image feature whose bytes are not an image: found before step 1, named by row
    rows = llava_data["messages"].to_list()
    broken = datasets.Dataset.from_dict({"messages": [r["messages"] for r in rows],
                                         "images": [[{"bytes": b"not a png", "path": None}] if i == 2 else r["images"]
                                                    for i, r in enumerate(rows)]})
    broken = broken.cast_column("images", datasets.List(datasets.Image()))
    broken.to_parquet(str(tmp_path / "broken.parquet"))
    with pytest.raises(InputError, match=r"broken.parquet, row 2 .*not an image"):
        _dataset(built, source="hf", path=str(tmp_path / "broken.parquet"))


def test_new_data_keys_are_validated(tiny_vlm_parts, tmp_path):
    base = _small(tiny_vlm_parts, tmp_path)
    with pytest.raises(ConfigError, match=r"data.format must be one of llava, messages, preference, prompt"):
        load_recipe(ALIGN, base + ["data.source=hf", "data.format=sharegpt"])
    with pytest.raises(ConfigError, match=r"data.urls is read with data.source shards only"):
        load_recipe(ALIGN, base + ["data.source=hf", "data.urls=a.tar"])
    with pytest.raises(ConfigError, match=r"data.source hf trains task vlm / rm / dpo / grpo / ppo, not .contrastive."):
        load_recipe(RECIPES / "clip_tiny_shapes" / "clip.yaml", ["data.source=hf"])
    with pytest.raises(ConfigError, match=r"data.shuffle_buffer must be an integer"):
        load_recipe(ALIGN, base + ["data.source=shards", "data.shuffle_buffer=many"])


def test_without_datasets_the_error_names_the_extra(monkeypatch, tmp_path):
    from ocellus.data.hf_dataset import open_dataset
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)   # `import datasets` fails
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"pip install 'ocellus\[data\]'"):
        open_dataset({"source": "hf", "path": str(tmp_path / "x.parquet")})

# ---- post-training rows: DPO (prompt / chosen / rejected + images), GRPO (prompt + answer column) -------

def _png(image) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


@pytest.fixture(scope="module")
def posttrain_rows(tmp_path_factory):
    from ocellus.train.preference import shapes_preference, shapes_prompt
    root = tmp_path_factory.mktemp("trl")
    cfg = ShapesConfig(seed=21, image_size=48, qa_weights=(("count", 1.0),))
    pairs = [shapes_preference(cfg, i) for i in range(8)]
    prompts = [shapes_prompt(cfg, i) for i in range(8)]
    image = datasets.List(datasets.Image())
    datasets.Dataset.from_dict({"prompt": [p["prompt"] for p in pairs], "chosen": [p["chosen"] for p in pairs],
                                "rejected": [p["rejected"] for p in pairs],
                                "images": [[_png(im) for im in p["images"]] for p in pairs]}).cast_column(
        "images", image).to_parquet(str(root / "pairs.parquet"))
    datasets.Dataset.from_dict({"prompt": [p["prompt"] for p in prompts], "answer": [p["answer"] for p in prompts],
                                "images": [[_png(im) for im in p["images"]] for p in prompts]}).cast_column(
        "images", image).to_parquet(str(root / "prompts.parquet"))
    return root, pairs, prompts


POST = ["train.max_steps=2", "train.progress=false", "train.log_every=1", "train.warmup_steps=0", "eval.n=4",
        "data.source=hf"]


def test_dpo_reads_preference_rows_from_parquet(posttrain_rows, tmp_path):
    from ocellus.train.posttrain import pair_dataset
    root, pairs, _ = posttrain_rows
    recipe = load_recipe(RECIPES / "posttrain" / "dpo.yaml", POST + [
        f"data.path={root / 'pairs.parquet'}", "method.rejected=plausible", "train.batch_size=4",
        f"train.out_dir={tmp_path / 'dpo'}"])
    read = pair_dataset(recipe)
    assert len(read) == len(pairs)
    for i, pair in enumerate(pairs):
        got = read[i]
        assert (got.chosen, got.rejected) == (pair["chosen"], pair["rejected"])
        assert got.prompt[0]["content"][-1]["text"] == pair["prompt"][0]["content"][-1]["text"]
        assert got.images[0].tobytes() == pair["images"][0].convert("RGB").tobytes()   # its own image
    run_recipe(recipe)
    lines = (tmp_path / "dpo" / "posttrain.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_grpo_reads_prompt_rows_and_passes_columns_to_the_rewards(posttrain_rows, tmp_path):
    from ocellus.train.posttrain import prompt_loader
    root, _, prompts = posttrain_rows
    recipe = load_recipe(RECIPES / "posttrain" / "grpo.yaml", POST + [
        f"data.path={root / 'prompts.parquet'}", "train.batch_size=2", "method.num_generations=2",
        f"train.out_dir={tmp_path / 'grpo'}"])
    loader = prompt_loader(recipe, 8)
    rows = loader.dataset
    assert [rows[i].columns["answer"] for i in range(len(rows))] == [p["answer"] for p in prompts]
    run_recipe(recipe)
    records = [json.loads(line) for line in (tmp_path / "grpo" / "posttrain.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(any(k.startswith("rewards/") for k in r) for r in records)
