"""parse_chat_request field by field at the limits the OpenAI chat-completions reference gives, in process (no
server): temperature in [0, 2] and top_p in (0, 1] inclusive of their upper ends, booleans that are JSON booleans
only, image detail "auto" / "low" / "high", at most 4 non-empty stop strings, exactly max_images images allowed,
stream_options holding only include_usage, whose value (not its presence) asks for the usage chunk."""
from __future__ import annotations

import pytest

from ocellus.serve.limits import ServeLimits
from ocellus.serve.openai_schema import APIError, parse_chat_request

MODEL = "m"
LIMITS = ServeLimits(max_images=3, max_videos=2, max_tokens=50, max_n=3)
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def parse(content="hi", **extra):
    return parse_chat_request({"model": MODEL, "messages": [{"role": "user", "content": content}], **extra},
                              LIMITS, MODEL)


def refused(content="hi", **extra) -> APIError:
    with pytest.raises(APIError) as e:
        parse(content, **extra)
    assert e.value.status == 400
    return e.value


def test_number_fields_accept_their_upper_bounds_and_refuse_past_them():
    p = parse(temperature=2, top_p=1, min_p=1.0, repetition_penalty=10).params
    assert (p.temperature, p.top_p, p.min_p, p.repetition_penalty) == (2.0, 1.0, 1.0, 10.0)
    assert parse(temperature=0).params.temperature == 0.0
    for field, value in (("temperature", 2.0001), ("top_p", 1.0001), ("min_p", 1.5), ("repetition_penalty", 10.5)):
        assert refused(**{field: value}).param == field


@pytest.mark.parametrize("field", ["stream", "ignore_eos", "logprobs"])
@pytest.mark.parametrize("value", [0, 1, "true"])
def test_boolean_fields_take_json_booleans_only(field, value):
    e = refused(**{field: value})
    assert (e.param, e.code) == (field, "invalid_type")


@pytest.mark.parametrize("detail", ["auto", "low", "high"])
def test_image_detail_levels_of_the_reference_are_accepted(detail):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": detail}}
    assert len(parse([part, {"type": "text", "text": "what?"}]).images) == 1


def test_an_unknown_image_detail_is_refused():
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "medium"}}
    assert refused([part]).param.endswith(".image_url.detail")


def test_exactly_max_images_images_are_accepted_and_one_more_refused():
    assert len(parse([IMAGE] * LIMITS.max_images).images) == LIMITS.max_images
    assert refused([IMAGE] * (LIMITS.max_images + 1)).code == "too_many_images"


def test_up_to_four_non_empty_stop_strings():
    assert parse(stop=["a", "b", "c", "d"]).params.stop == ("a", "b", "c", "d")
    assert parse(stop="###").params.stop == ("###",)
    for stop in (["a", "b", "c", "d", "e"], [""], "", ["a", ""], [1]):
        assert refused(stop=stop).param == "stop"


def test_stream_options_hold_only_include_usage_and_its_value_decides():
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage is True
    assert parse(stream=True, stream_options={"include_usage": False}).include_usage is False
    assert parse(stream=True, stream_options={}).include_usage is False
    assert parse(stream=True).include_usage is False
    assert refused(stream=True, stream_options={"include_usage": True, "chunk_size": 4}).param == "stream_options"
