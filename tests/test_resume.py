"""Resumable fits (weightgen/checkpointing.py): a fit killed with SIGKILL, or stopped by Ctrl-C,
resumes from its last checkpoint and ends with the weights of a fit never interrupted; a checkpoint
of another config is refused naming the section; a failed save leaves the previous one whole."""
from __future__ import annotations

import signal
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import PDIFF_GEN, PDIFF_ZOO_CFG, PYTHON, SEEDS_ZOO_CFG, parse, subprocess_env, write_config
from weightgen import checkpointing
from weightgen.checkpointing import CHECKPOINT_FILE, CheckpointError
from weightgen.diffusion.schedule import Diffusion
from weightgen.generators import pdiff as pdiff_mod
from weightgen.pipeline import fit_generator
from weightgen.zoo import Zoo

TINY_RPG = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 30,
            "batch_size": 2, "tokens_per_step": 5, "sample_chunk": 1000, "ema": 0.9,
            "lr_schedule": "cosine", "diffusion": {"timesteps": 20}}
RPG_CFG = {**SEEDS_ZOO_CFG, "generator": TINY_RPG}
EVERY = 5


def _weights(gen) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name, m in gen.components().items() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def rpg_uninterrupted(seeds_zoo):
    """Weights of the tiny RPG fit run through, once without checkpoints and once with them."""
    with Zoo.open(seeds_zoo) as zoo:
        plain = _weights(fit_generator(parse(RPG_CFG), zoo, show_progress=False)[0])
    return plain


def test_checkpoints_do_not_change_the_fit(seeds_zoo, rpg_uninterrupted, tmp_path):
    with Zoo.open(seeds_zoo) as zoo:
        gen, stats = fit_generator(parse(RPG_CFG), zoo, show_progress=False, checkpoint_dir=tmp_path, checkpoint_every=EVERY)
    _same(_weights(gen), rpg_uninterrupted)
    assert "resumed_from" not in stats


def test_sigkill_mid_fit_then_train_again_resumes_to_the_same_weights(seeds_zoo, rpg_uninterrupted, tmp_path):
    """A child `weightgen train` kills itself with SIGKILL inside step 23 (after the checkpoint of
    step 20); `weightgen train` run again loses 3 steps and ends where an uninterrupted fit ends."""
    cfg_path = write_config(tmp_path / "rpg.yaml", RPG_CFG)
    out = tmp_path / "generator"
    child = textwrap.dedent(f"""
        import os, signal, sys
        from weightgen.generators import rpg
        from weightgen.cli import app
        calls = [0]
        loss = rpg.RPG.loss
        def dying_loss(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 24:  # inside step 23 (0-based): after the checkpoint of step 20
                os.kill(os.getpid(), signal.SIGKILL)
            return loss(self, *args, **kwargs)
        rpg.RPG.loss = dying_loss
        sys.argv = ["weightgen", "train", {str(cfg_path)!r}, "--zoo", {str(seeds_zoo)!r}, "--out", {str(out)!r},
                    "--checkpoint-every", "{EVERY}"]
        app()
    """)
    proc = subprocess.run([PYTHON, "-c", child], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = out / CHECKPOINT_FILE
    assert saved.is_file() and not (out / f".{CHECKPOINT_FILE}.partial").exists()
    assert checkpointing.FitCheckpoint(out, EVERY, checkpointing.config_sections(parse(RPG_CFG)), {}).saved["step"] == 20

    from typer.testing import CliRunner

    from weightgen.cli import app
    from weightgen.generators import load_generator

    res = CliRunner().invoke(app, ["train", str(cfg_path), "--zoo", str(seeds_zoo), "--out", str(out),
                                   "--checkpoint-every", str(EVERY)])
    assert res.exit_code == 0, res.output
    assert "resumed at step 20" in " ".join(res.output.split())
    assert not saved.exists()  # the fit is done: its checkpoint is removed
    _same(_weights(load_generator(out, "cpu")), rpg_uninterrupted)


def test_ctrl_c_in_the_second_phase_resumes_without_redoing_the_first(pdiff_zoo, tmp_path, monkeypatch):
    """p-diff fits in two phases (autoencoder, then latent diffusion): interrupted in the second, the
    resumed fit skips the first, reloads it, and ends with the uninterrupted fit's weights."""
    cfg = parse({**PDIFF_ZOO_CFG, "generator": {**PDIFF_GEN, "ema": 0.9}})
    with Zoo.open(pdiff_zoo) as zoo:
        whole = _weights(fit_generator(cfg, zoo, show_progress=False)[0])
        calls, real = [0], Diffusion.loss

        def interrupted(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 13:
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Diffusion, "loss", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fit_generator(cfg, zoo, show_progress=False, checkpoint_dir=tmp_path, checkpoint_every=EVERY)
        monkeypatch.setattr(Diffusion, "loss", real)
        ae_steps, augment = [], pdiff_mod.augment
        monkeypatch.setattr(pdiff_mod, "augment", lambda x, s: ae_steps.append(1) or augment(x, s))
        gen, stats = fit_generator(cfg, zoo, show_progress=False, checkpoint_dir=tmp_path, checkpoint_every=EVERY)
    assert stats["resumed_from"] == {"phase": 1, "step": 10}
    assert not ae_steps, "the autoencoder's phase ran again"
    _same(_weights(gen), whole)


def test_a_checkpoint_of_another_config_is_refused_naming_the_section(seeds_zoo, tmp_path):
    with Zoo.open(seeds_zoo) as zoo:
        fit_generator(parse(RPG_CFG), zoo, show_progress=False, checkpoint_dir=tmp_path, checkpoint_every=EVERY)
        other = parse({**RPG_CFG, "generator": {**TINY_RPG, "lr": 0.5}})
        with pytest.raises(CheckpointError, match=r"another config \(section generator differs\)"):
            fit_generator(other, zoo, show_progress=False, checkpoint_dir=tmp_path)
        # sampling and judging settings are not part of a fit: the checkpoint is taken
        same_fit = parse({**RPG_CFG, "sample": {"n": 3}, "name": "renamed"})
        assert fit_generator(same_fit, zoo, show_progress=False, checkpoint_dir=tmp_path)[1]["resumed_from"]["step"] == 30


def test_a_failed_save_leaves_the_previous_checkpoint_whole(seeds_zoo, tmp_path, monkeypatch, caplog):
    """A disk that fills during the second save: no partial file, the first checkpoint unchanged, a
    warning, and the fit goes on to the end."""
    real, saves = checkpointing.save_file, []

    def disk_full(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) == 2:
            with open(path, "wb") as f:
                f.write(b"half")  # what a full disk leaves behind
            raise OSError(28, "No space left on device")
        if len(saves) > 2:
            raise AssertionError("stop after the failed save")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpointing, "save_file", disk_full)
    monkeypatch.setattr(checkpointing.FitCheckpoint, "due", lambda self, done, total: done in (5, 10))
    with Zoo.open(seeds_zoo) as zoo:
        fit_generator(parse(RPG_CFG), zoo, show_progress=False, checkpoint_dir=tmp_path, checkpoint_every=EVERY)
    assert len(saves) == 2
    assert "could not save the fit's checkpoint at step 10" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    ck = checkpointing.FitCheckpoint(tmp_path, EVERY, checkpointing.config_sections(parse(RPG_CFG)), {})
    assert ck.saved["step"] == 5
    assert load_file(str(tmp_path / CHECKPOINT_FILE))  # readable, whole
