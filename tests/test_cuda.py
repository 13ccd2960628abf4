"""The CUDA path, skipped without a GPU: each method's loss on CUDA equals the CPU's for the
same weights and batch (fp32 with TF32 off to 1e-4 relative; bf16 autocast within 5e-2),
optimizer steps under bf16 + channels_last stay finite and lower the loss, training,
sampling, eval.py and resume run on the GPU, the ex-post samplers see fp32 codes, and the
Inception features equal the CPU's (TF32 off while they are computed).

What holds on resume: the run continues from its checkpoint with its weights, optimizer
and random state; the weights are not bit-identical to an uninterrupted run's, since cuDNN
picks its algorithms anew (benchmark mode) in each process."""
import copy

import pytest
import torch

import common
import dae
import deciphering as D
import eval as eval_module
from benchmark import METHODS, build
from conftest import log_records, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DETERMINISTIC = [m for m in METHODS if m != "vae"]  # the VAE draws its noise on the device


def to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to(v, device) for v in value)
    return value


def loss_on(step, inputs, device, bf16=False):
    model = copy.deepcopy(step.model).to(device).train()
    inputs = to(inputs, device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device == "cuda"):
        return step.loss(step.forward(model, inputs), inputs).float().item()


@pytest.fixture
def exact_cuda():
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_cuda_loss_equals_cpu_loss(method, weights, exact_cuda):
    step = build(method, torch.device("cpu"), small=True)
    inputs = step.batch()
    cpu = loss_on(step, inputs, "cpu")
    # The loss closes over CPU-side parts (LPIPS, VGG, the model for its L2): rebuild on CUDA.
    cuda_step = build(method, torch.device("cuda"), small=True)
    cuda_step.model.load_state_dict(step.model.state_dict())
    assert loss_on(cuda_step, inputs, "cuda") == pytest.approx(cpu, rel=1e-4)
    assert loss_on(cuda_step, inputs, "cuda", bf16=True) == pytest.approx(cpu, rel=5e-2)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_channels_last_steps_lower_the_loss(method, weights):
    step = build(method, torch.device("cuda"), small=True)
    model = step.model.to(memory_format=torch.channels_last).train()
    inputs = step.batch()
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    losses = []
    for number in range(6):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step.loss(step.forward(model, inputs), inputs)
        step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step.optimizer.step()
        step.after(number)
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


def test_training_sampling_eval_and_resume_on_the_gpu(weights, tmp_path):
    folder = train(dae, tmp_path, dataset="digits", filters=8, latent_dim=8, epochs=1,
                   batch_size=64, gmm_components=2, device="cuda")
    run = dae.load_run(folder, "cuda")
    images = dae.sample(run, 16, "gmm")
    assert images.is_cuda and 0 <= images.min() and images.max() <= 1
    # The samplers were fitted on fp32 codes (no autocast), as eval.py encodes.
    train_images = common.load_images("digits", "", "train").cuda()
    with torch.no_grad():
        codes = torch.cat([run.model.encoder(x.float() / 255) for x in train_images.split(500)])
    torch.testing.assert_close(run.samplers["mvg"].means[0].float(), codes.mean(0).cpu(),
                               rtol=0, atol=1e-5)
    metrics = eval_module.evaluate(str(folder), eval_module.Args(num_samples=64, batch_size=32,
                                                                 device="cuda"))
    assert all(torch.isfinite(torch.tensor(c["fid"])) for c in metrics["columns"].values())
    dae.train(dae.Args(resume=str(folder), epochs=2), {"resume", "epochs"})
    log = log_records(folder)
    assert [r["epoch"] for r in log] == [1, 2] and common.load_checkpoint(folder)["epoch"] == 1


def test_deciphering_samples_on_the_gpu(weights, tmp_path):
    folder = train(D, tmp_path, dataset="fake", widths=[16, 32, 64, 128], active=[1, 2, 4],
                   clusters=4, latent_dim=16, batch_size=32, lpips_size=64, epochs=1,
                   device="cuda")
    run = D.load_run(folder, "cuda")
    for sampler in run.samplers:
        images = D.sample(run, 8, sampler, seed=1)
        assert images.is_cuda and images.shape == (8, 3, 32, 32)


def test_inception_features_on_the_gpu_equal_the_cpus(weights):
    """inception_outputs turns TF32 off (and restores it): features of the same images on
    CUDA match the CPU's to fp32 accuracy even while TF32 is on for training."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    net = common.Inception()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu, _ = common.inception_outputs(net, [x])
    gpu, _ = common.inception_outputs(net.to("cuda"), [x])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5 * cpu.abs().max().item())
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
