"""`ocellus eval --shots K`: the K solved examples put before each question are drawn from the held-out pool and
are not scored themselves: n samples are scored, none of them a shot (a shot scored would be asked with its own
answer in the prompt). predict is replaced by a recorder: nothing is generated."""
from ocellus.eval import harness
from ocellus.hub.checkpoint import load_model
from ocellus.hub.resolve import default_model_dir
from ocellus.data.processor import load_processor


def test_shots_are_not_among_the_scored_samples(monkeypatch):
    seen = {}

    def record(model, processor, samples, shots, max_new, batch_size, **kw):
        seen.update(samples=samples, shots=shots)
        return [s["answer"] for s in samples]
    monkeypatch.setattr(harness, "predict", record)
    model_dir = default_model_dir()
    result = harness.evaluate(model_dir, "shapes-vqa", n=3, shots=2, printer=lambda *a: None,
                              model=load_model(model_dir), processor=load_processor(model_dir))
    assert result["n"] == 3 and len(seen["samples"]) == 3 and len(seen["shots"]) == 2
    assert not {s["id"] for s in seen["samples"]} & {s["id"] for s in seen["shots"]}
    assert result["table"]["all"][1] == 1.0          # every scored sample answered with its own answer
