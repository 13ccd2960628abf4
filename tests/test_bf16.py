"""The CUDA path rehearsed on the CPU: bf16 autocast and channels_last switched on there
(common.FAST), for one training step and one sampling step of each method, through the
method's own code. No GPU has run this project yet, so a dtype slip in the first minute of
`python deciphering.py --epochs 1000` on a GPU would otherwise be found there. The step stays
finite and within bf16's tolerance of the fp32 step (same weights, same batch); the models
compute in bf16 while the fp32 islands stay fp32: the losses, LPIPS and the perceptual
loss, the ex-post samplers and the LDE's log-density (float64), the metrics (test_eval)."""
import math

import pytest
import torch

import common
import dae
import deciphering
import eae
import iae_lde
import rae
import vae
from test_options import MODULES, probe

MODELS = {"dae": dae.DAE, "vae": vae.VAE, "rae": rae.RAE, "eae": eae.EAE, "iae_lde": iae_lde.IAE,
          "deciphering": deciphering.DecipheringAE}
# Each run: one epoch, to the end (stage two too for the IAE: its LDE samples).
SETTINGS = {"iae_lde": {"perc_weight": 0.1, "call": "main"}}


@pytest.fixture(scope="module")
def lpips_net(torch_home):
    """The deciphering AE's LPIPS network, built once, when a probe first needs it."""
    built, load = [], deciphering.load_lpips  # (the probes replace load_lpips)

    def get():
        if not built:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TORCH_HOME", str(torch_home))
                built.append(load(torch.device("cpu")))
        return built[0]
    return get


def output_dtypes(monkeypatch, name) -> list:
    """The dtype of the first tensor every forward of the method's model returns."""
    dtypes, forward = [], MODELS[name].forward

    def recorded(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        dtypes.append((out[0] if isinstance(out, tuple) else out).dtype)
        return out
    monkeypatch.setattr(MODELS[name], "forward", recorded)
    return dtypes


def loss_value(seen) -> float:
    return next(iter(seen.loss().values())) if "loss" not in seen.loss() else seen.loss()["loss"]


@pytest.mark.parametrize("name", list(MODULES))
def test_a_bf16_channels_last_step_and_samples_on_the_cpu(name, tmp_path, monkeypatch, lpips_net,
                                                          torch_home):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    settings = SETTINGS.get(name, {})
    exact = probe(name, tmp_path / "fp32", monkeypatch, lpips_net, steps=1,
                  **{k: v for k, v in settings.items() if k != "call"})
    monkeypatch.setattr(common, "FAST", True)
    dtypes = output_dtypes(monkeypatch, name)
    perceptual = []
    features = iae_lde.Perceptual.features
    monkeypatch.setattr(iae_lde.Perceptual, "features",
                        lambda self, x: perceptual.append(x.dtype) or features(self, x))
    fast = probe(name, tmp_path / "bf16", monkeypatch, lpips_net, steps=None, **settings)
    # the training step: in bf16 with channels_last, its loss fp32, finite, near fp32's
    assert dtypes[0] == torch.bfloat16
    first, reference = loss_value(fast), loss_value(exact)
    assert math.isfinite(first) and first == pytest.approx(reference, rel=2e-2)
    assert all(v.dtype == torch.float32 for _, _, v in fast.losses[:1]
               for v in (v.values() if isinstance(v, dict) else [v]))
    convs = [m.weight for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    if name == "deciphering":
        noise = fast.calls["training_batch"][0][2][0]  # the encoder's input
        assert noise.is_contiguous(memory_format=torch.channels_last)
        assert fast.calls["lpips_dtype"][0] == (torch.float32, torch.float32)  # fp32 LPIPS
    else:
        assert fast.batches[0].is_contiguous(memory_format=torch.channels_last)
    if name == "iae_lde":
        assert perceptual and set(perceptual) == {torch.float32}  # fp32 VGG features
    assert all(torch.isfinite(v).all() for v in fast.model.state_dict().values()
               if v.is_floating_point())
    # the sampling step, under bf16 autocast as a GPU caller would run it
    module = MODULES[name]
    run = module.load_run(str(fast.folder))
    for sampler in run.samplers:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = module.sample(run, 4, sampler, 0)
        assert images.dtype == torch.float32 and images.shape[0] == 4, sampler
        assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
        if hasattr(run.samplers[sampler], "log_prob"):  # the ex-post densities, the LDE
            with torch.autocast("cpu", dtype=torch.bfloat16):
                codes = run.samplers[sampler].sample(4, 0)
                log_p = run.samplers[sampler].log_prob(codes)
            assert codes.dtype == torch.float32 and log_p.dtype == torch.float64, sampler
            assert torch.isfinite(log_p).all(), sampler
