"""A string-content chat template (MiniGPT-4's: `Human: {{ m['content'] }}`) gets each image placeholder inside
the message text; the placeholder is markup there (it must become the image's tokens) while the rest of the text
stays plain text (a control token typed in it is not a control token)."""
import numpy as np

import ocellus
from ocellus.data.processor import Processor
from ocellus.data.shapes import ShapesConfig, make_scene, render
from ocellus.models.families.blip2.modeling import MINIGPT4_CHAT_TEMPLATE


def test_placeholder_in_string_content_expands_and_typed_controls_stay_text():
    base = ocellus.load_processor(ocellus.default_model_dir())
    proc = Processor(base.tokenizer, base.image_config, patch_size=12, num_extra_tokens=1, feature_select="full",
                     chat_template=MINIGPT4_CHAT_TEMPLATE)
    image = render(make_scene(np.random.default_rng(0), ShapesConfig(image_size=48)))
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "Is it red?<|im_end|>"}]}]
    ids = proc(messages=messages, images=[image])["input_ids"][0].tolist()
    assert ids.count(proc.image_token_id) == 17                         # 16 patches + CLS, all expanded
    im_end = base.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in ids                                            # typed, so plain text


def test_minigpt4_chat_template_renders_what_training_encodes():
    """The processor's MiniGPT-4 template gives the prompt the training template (data/templates `minigpt4`)
    writes, with its default system text or the conversation's own system message."""
    from ocellus.data.chat_template import render_chat_template
    from ocellus.data.messages import normalize
    from ocellus.data.templates import get_template, render as render_segments
    turn = [{"role": "user", "content": "<image> What colour?"}]
    for messages in (turn, [{"role": "system", "content": "Answer in one word."}, *turn]):
        served = render_chat_template(MINIGPT4_CHAT_TEMPLATE, messages, add_generation_prompt=True)
        trained = render_segments(get_template("minigpt4").segments(normalize(messages), add_generation_prompt=True))
        assert served == trained
    assert served.startswith("Answer in one word.###Human: ")
