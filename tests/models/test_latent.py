"""Latent models: a tiny random-weight Stable Diffusion folder (written by tiny_sd.py) loaded with
``loader: diffusers_sd`` samples, guides and decodes exactly as diffusers' own StableDiffusionPipeline."""
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dode.core.sampling import sample  # noqa: E402
from dode.models.checkpoints import load_checkpoint  # noqa: E402
from dode.models.files import CheckpointError  # noqa: E402
from tiny_sd import write_tiny_sd  # noqa: E402

PROMPTS = ["the cat sat on the mat", "a red boat", "an ant"]


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def sd(request, tmp_path_factory):
    folder = write_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", prediction=request.param)
    return folder, request.param


def pipeline(folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)


def load(folder, scale=None):
    cfg = {"name": "tiny-sd", "loader": "diffusers_sd", "path": str(folder)}
    if scale is not None:
        cfg["guidance"] = {"scale": scale}
    return load_checkpoint(cfg)


def latents(n=3, seed=0):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_guided_noise_prediction_equals_the_pipelines(sd):
    """ε of dode's guided denoiser at one timestep = the pipeline's: its prompt encoding, the U-Net on
    [z; z] with [∅; c], then ε_∅ + w(ε_c − ε_∅) (v-models: the pipeline's ε from v)."""
    folder, prediction = sd
    pipe, den, w = pipeline(folder), load(folder, 4.0), 4.0
    den.set_prompts(PROMPTS)
    z, t = latents(), 700
    with torch.no_grad():
        cond, null = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=None)
        out = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([null, cond])).sample
        o_null, o_cond = out.chunk(2)
        o = o_null + w * (o_cond - o_null)
        abar = pipe.scheduler.alphas_cumprod[t].double()
        a, s = abar.sqrt(), (1 - abar).sqrt()
        eps_theirs = o if prediction == "epsilon" else a * o + s * z.double()  # ε = √ᾱ·v + √(1−ᾱ)·z
        sigma = torch.full((3,), float(s / a), dtype=torch.float64)
        x = z.double() / a
        eps_ours = (x - den(x, sigma)) / sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(eps_ours.float(), eps_theirs.float(), rtol=1e-4, atol=1e-5)


def test_ddim_with_guidance_equals_the_pipelines_latents(sd):
    """The pipeline's DDIM (η = 0, 'leading' timesteps, guidance 3) from latents z and dode's DDIM on the
    same timesteps from the same z end at the same latents."""
    from diffusers import DDIMScheduler

    folder, _ = sd
    pipe, den = pipeline(folder), load(folder, 3.0)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    steps, z = 3, latents(seed=1)
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=3.0, latents=z.clone(), height=16, width=16,
                      output_type="latent").images
    pipe.scheduler.set_timesteps(steps)
    taus = pipe.scheduler.timesteps.double() + 1  # dode's τ = training step + 1; the last step goes to ᾱ_0 (τ = 1)
    grid = den.schedule.sigma(torch.cat([taus, torch.ones(1, dtype=torch.float64)]))
    den.set_prompts(PROMPTS)
    x = sample(den, z.double(), solver="ddim", nfe=steps, grid=grid)
    ours = x * torch.rsqrt(1 + grid[-1] ** 2)  # VE state → VP latent at ᾱ_0
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-4, atol=2e-5)


def test_decode_is_the_vae_decoder_in_batches(sd):
    folder, _ = sd
    pipe, den = pipeline(folder), load(folder)
    den.decode_batch = 2
    z = latents(5, seed=2)
    with torch.no_grad():
        want = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    got = den.decode(z)
    assert got.shape == (5, 3, 16, 16) and (den.channels, den.resolution) == (3, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert den.latent_shape == (4, 8, 8)


def test_unguided_model_needs_prompts_and_incomplete_folders_are_named(sd, tmp_path):
    folder, _ = sd
    den = load(folder)
    with pytest.raises(ValueError, match="needs prompts"):
        den(latents(1), torch.ones(1, dtype=torch.float64))
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="missing vae, text_encoder, tokenizer, scheduler/scheduler_config.json"):
        load(tmp_path / "half")
    with pytest.raises(CheckpointError, match="dtype must be one of float32, float16, bfloat16"):
        load_checkpoint({"name": "x", "loader": "diffusers_sd", "path": str(folder), "dtype": "int8"})


def test_guidance_config_on_a_class_conditional_diffusers_model(tmp_path):
    """checkpoint.guidance {scale, null_class} on a class-conditional UNet2DModel (label 2 = "no class")
    gives the CFG formula of two unguided calls; a guidance entry without ∅ or with a typo is refused."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      norm_num_groups=4, num_class_embeds=3)
    net.save_pretrained(tmp_path / "m")
    cfg = {"name": "tiny-class", "loader": "diffusers", "path": str(tmp_path / "m")}
    plain = load_checkpoint(cfg)
    den = load_checkpoint({**cfg, "guidance": {"scale": 2.5, "null_class": 2}})
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.5, 2.0, 9.0, 30.0], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        plain.model_kwargs["class_labels"] = labels
        d_cond = plain(x, sigma)
        plain.model_kwargs["class_labels"] = torch.full_like(labels, 2)
        d_null = plain(x, sigma)
        den.model_kwargs["class_labels"] = labels
        torch.testing.assert_close(den(x, sigma), d_null + 2.5 * (d_cond - d_null), rtol=1e-5, atol=1e-5)
    assert den.num_classes == 3 and den.schedule.T == plain.schedule.T == 1000
    with pytest.raises(CheckpointError, match="needs the empty condition"):
        load_checkpoint({**cfg, "guidance": {"scale": 2.0}})
    with pytest.raises(CheckpointError, match="unknown guidance key.*sclae; valid: scale, null_class"):
        load_checkpoint({**cfg, "guidance": {"sclae": 2.0}})
    assert load_checkpoint({**cfg, "guidance": {"scale": None}}).__class__ is plain.__class__
