"""sample_images hands each generator kind its own options from a recipe's / the CLI's generation dict (a
recording model stands in for the trained one), and a tokenizer kind is refused."""
import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.models.generative.sampling import sample_images


class Recorder:
    def __init__(self, kind):
        self.spec, self.calls = {"kind": kind}, []

    def eval(self):
        return self

    def generate(self, labels, **kw):
        self.calls.append(kw)
        return torch.zeros(len(labels), 3, 4, 4)


def test_each_kind_gets_its_options():
    labels = torch.tensor([0, 1])
    diffusion = Recorder("diffusion")
    sample_images(diffusion, labels, {"steps": 7, "sampler": "ddpm", "guidance_scale": 3.5}, seed=2)
    (kw,) = diffusion.calls
    assert (kw["steps"], kw["sampler"], kw["guidance_scale"]) == (7, "ddpm", 3.5)
    assert isinstance(kw["generator"], torch.Generator) and kw["generator"].initial_seed() == 2
    maskgit = Recorder("maskgit")
    sample_images(maskgit, labels, {"steps": 5, "guidance_scale": 2.0})
    assert (maskgit.calls[0]["steps"], maskgit.calls[0]["guidance_scale"]) == (5, 2.0)
    ar = Recorder("ar")
    sample_images(ar, labels, {"top_k": 4, "temperature": 0.5}, seed=9)
    assert ar.calls[0] == {"top_k": 4, "temperature": 0.5, "seed": 9}
    defaults = Recorder("diffusion")
    sample_images(defaults, labels, {})
    assert (defaults.calls[0]["steps"], defaults.calls[0]["sampler"], defaults.calls[0]["guidance_scale"]) == \
        (50, "ddim", 1.0)
    with pytest.raises(ConfigError, match="is a tokenizer"):
        sample_images(Recorder("vqgan"), labels, {})
