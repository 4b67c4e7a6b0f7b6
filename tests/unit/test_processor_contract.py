"""The Processor's own contract (data/processor.py), on the default model's processor and a BOS-adding tokenizer
built here: .to() casts pixels but never ids; a reply is cut at its first stop string; an image token the
tokenizer would split is refused; text= prompts get the special tokens a tokenizer call adds, messages= do not."""
import copy

import pytest
import torch
from tokenizers import processors

import ocellus
from ocellus.data.bpe import train_bpe
from ocellus.data.processor import Processor
from ocellus.errors import ConfigError


@pytest.fixture(scope="module")
def proc():
    return ocellus.load_processor(ocellus.default_model_dir())


def _image():
    from PIL import Image
    return Image.new("RGB", (48, 48), (200, 30, 30))


def test_to_casts_pixels_never_ids(proc):
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                 images=[_image()]).to(dtype=torch.bfloat16)
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_cut_reply_stops_at_the_first_stop_string(proc):
    stopped = copy.copy(proc)
    stopped.stop_strings = ("###",)
    assert stopped.cut_reply("a red circle###Human: and###") == "a red circle"
    assert stopped.cut_reply("no stop here") == "no stop here"


def test_an_image_token_that_is_not_one_special_token_is_refused(proc):
    tok = train_bpe(["a red circle and a blue square"] * 10, 300, image_token=None,
                    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    with pytest.raises(ConfigError, match="does not have the image token '<image>' as one special token"):
        Processor(tok, proc.image_config, patch_size=proc.patch_size)             # not in the vocabulary
    tok.backend.add_tokens(["<image>"])                                           # one token, but not special
    with pytest.raises(ConfigError, match="does not have the image token '<image>' as one special token"):
        Processor(tok, proc.image_config, patch_size=proc.patch_size)


def test_text_prompts_get_the_tokenizers_special_tokens_messages_do_not(proc):
    tok = copy.deepcopy(proc.tokenizer)
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                               special_tokens=[("<|endoftext|>", bos)])
    p = Processor(tok, proc.image_config, patch_size=proc.patch_size)
    ids = p(text="<image> what colour?", images=[_image()])["input_ids"][0].tolist()
    assert ids[0] == bos and ids.count(bos) == 1
    chat = p(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
             images=[_image()])["input_ids"][0].tolist()
    assert bos not in chat               # the template writes what it wants; apply_chat_template(tokenize=True)
