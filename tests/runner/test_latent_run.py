"""dode-run on a latent text-to-image model end to end on the CPU: a tiny random-weight Stable Diffusion
folder, classifier-free guidance, captions from a COCO-format file, D-ODE fit on latents, generate,
VAE decode, a metric on the decoded images, resuming."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dode import Correction  # noqa: E402
from dode.core.sampling import sample  # noqa: E402
from dode.eval.clip import clip_sums  # noqa: E402
from dode.eval.data import to_uint8  # noqa: E402
from dode.models.checkpoints import load_checkpoint  # noqa: E402
from dode.runner.results import read_runs  # noqa: E402
from dode.runner.seeds import make_noise  # noqa: E402
from runner_helpers import ROOT, run_main, shards, write_test_conf  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "models"))
from tiny_sd import write_tiny_clip, write_tiny_sd  # noqa: E402

CAPTIONS = ["a red boat on the sea", "the cat sat on the mat", "an ant", "two dogs in the park",
            "a plate of food", "the tall tower", "a train at night", "a kite in the sky", "a bowl of fruit",
            "the old man"]
ARGS = ["dataset=test-coco", "progress=false", "nfe=[3]", "seeds=[0]", "shard_size=3", "batch_size=3", "batch=4",
        "scale=2", "solver=ddim", "distill=dode"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    folder = write_tiny_sd(root / "tiny-sd")
    ann = {"annotations": [{"id": 100 + 7 * i, "image_id": i, "caption": c} for i, c in enumerate(CAPTIONS)]}
    (root / "captions.json").write_text(json.dumps(ann))
    conf = write_test_conf(root / "conf")
    (conf / "checkpoint" / "test-sd.yaml").write_text(
        f"name: test-sd\nloader: diffusers_sd\npath: {folder}\nguidance:\n  scale: 3.0\ndecode_batch: 2\n")
    (conf / "dataset" / "test-coco.yaml").write_text(
        "defaults:\n  - override /checkpoint@_global_.checkpoint: test-sd\n  - override /eval@_global_.eval: test-mean\n"
        f"name: test-coco\nresolution: 16\nchannels: 3\nnum_samples: 6\n"
        f"captions:\n  path: {root / 'captions.json'}\n  count: 8\n  seed: 3\n")
    clip = write_tiny_clip(root / "clip")
    (conf / "eval" / "test-clip.yaml").write_text(f"name: test-clip\nmetric: clip_score\nclip_weights: {clip}\n"
                                                  "batch_size: 4\n")
    return root, conf, folder


def run(conf: Path, results: Path, *extra: str) -> int:
    return run_main(f"hydra.searchpath=[file://{conf}]", f"results_dir={results}", *ARGS, *extra)


def test_guided_latent_run_fits_generates_decodes_scores_and_resumes(setup, tmp_path):
    root, conf, folder = setup
    assert run(conf, tmp_path) == 0
    df = read_runs(tmp_path).set_index("distill")
    assert set(df.index) == {"none", "dode"} and np.isfinite(df["value"]).all()
    (dode_dir,) = [p.parent for p in tmp_path.rglob("lambdas.json")]

    # the prompts: the 8 captions of smallest sha256("dode-captions:3:<id>"), sample i → caption i
    keyed = sorted(((100 + 7 * i, c) for i, c in enumerate(CAPTIONS)),
                   key=lambda kc: hashlib.sha256(f"dode-captions:3:{kc[0]}".encode()).hexdigest())[:8]
    record = json.loads((dode_dir / "prompts.json").read_text())
    assert [p["caption"] for p in record["prompts"]] == [c for _, c in keyed][:6]
    assert [p["key"] for p in record["prompts"]] == [k for k, _ in keyed][:6] and record["seed"] == 3

    # every shard holds decoded 16×16 RGB images; they equal an independent run of the same pieces:
    # the guided model, the fitted λ, noise of sample i on latents, its caption, the VAE decode
    corr = Correction.load(dode_dir / "lambdas.json")
    assert bool((corr.lambdas != 0).any())
    den = load_checkpoint({"name": "test-sd", "loader": "diffusers_sd", "path": str(folder), "guidance": {"scale": 3.0}})
    noise, _ = make_noise(0, range(3, 6), (4, 8, 8))
    den.set_prompts([c for _, c in keyed][3:6])
    want = to_uint8(den.decode(sample(den, noise, solver="ddim", nfe=3, lambdas=corr)))
    with np.load(dode_dir / "seed-0" / "samples" / "shard-0000003-0000006.npz") as z:
        got = z["images"]
    assert got.shape == (3, 16, 16, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1

    # resuming: nothing is redone; a lost shard comes back identical
    before = shards(tmp_path)
    values = read_runs(tmp_path)["value"].tolist()
    assert run(conf, tmp_path) == 0
    assert shards(tmp_path) == before and read_runs(tmp_path)["value"].tolist() == values
    lost = dode_dir / "seed-0" / "samples" / "shard-0000000-0000003.npz"
    digest = hashlib.sha256(lost.read_bytes()).hexdigest()
    lost.unlink()
    assert run(conf, tmp_path) == 0
    assert hashlib.sha256(lost.read_bytes()).hexdigest() == digest
    assert read_runs(tmp_path)["value"].tolist() == values

    # the CLIP score of the same shards (eval is not part of the run key): sample i against caption i
    before = shards(tmp_path)
    assert run(conf, tmp_path, "eval=test-clip") == 0 and shards(tmp_path) == before
    df = read_runs(tmp_path)
    clip = df[df["metric"] == "test-clip"].set_index("distill")
    assert len(clip) == 2 and set(clip["nfe_convention"]) == {"guided"}
    with np.load(dode_dir / "seed-0" / "samples" / "shard-0000000-0000003.npz") as z:
        images = np.concatenate([z["images"], got])
    want = clip_sums(images, [c for _, c in keyed][:6], str(root / "clip"))
    assert clip.loc["dode", "value"] == pytest.approx(want.score, abs=1e-4)


def test_text_model_and_captions_must_come_together(setup, tmp_path, capsys):
    root, conf, _ = setup
    assert run(conf, tmp_path, "~dataset.captions") == 2
    assert "is a text-to-image model: choose a dataset with captions" in capsys.readouterr().err
    assert run(conf, tmp_path, "dataset.captions.path=/nowhere/caps.json") == 2
    err = capsys.readouterr().err
    assert "captions file not found: /nowhere/caps.json" in err and "Traceback" not in err
    assert run(conf, tmp_path, "checkpoint=test-oracle-vp", "dataset.channels=1", "dataset.resolution=4") == 2
    assert "has captions but checkpoint test-oracle-vp takes no text" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.npz"))


def test_clip_score_without_its_weights_fails_before_sampling(setup, tmp_path, capsys):
    root, conf, _ = setup
    assert run(conf, tmp_path, "eval=test-clip", "eval.clip_weights=/nowhere/clip") == 2
    err = capsys.readouterr().err
    assert "the CLIP weights folder /nowhere/clip does not exist" in err and "openai/clip-vit-large-patch14" in err
    assert not list(tmp_path.rglob("*.npz"))
