"""weightgen.diagnostics: teacher-forced RPG tokens read only the true tokens before each token
(and each row's condition), an interpolated network lies between two originals of different
runs, and predict_x0 inverts every prediction type."""
from __future__ import annotations

import pytest
import torch

from test_diffusion import _oracle
from test_rpg import _jitter, _spec, _standalone
from test_rpg_condition import A, B
from test_rpg_condition import _standalone as _conditional
from weightgen.diagnostics import interpolated, predict_x0, teacher_forced_tokens
from weightgen.diffusion import Diffusion
from weightgen.evaluate import stack_states
from weightgen.generators import GeneratorError
from weightgen.nets import build_net
from weightgen.tasks import code_bits, get_task


def test_teacher_forced_tokens_read_only_the_true_tokens_before_each_token():
    gen, tok, states = _standalone(_spec(recurrent_input="tokens"))
    _jitter(gen)
    x = tok.tokenize_batch(states)
    s = torch.tensor([0, 1, 1])
    made = teacher_forced_tokens(gen, x, s, seed=3, steps=5)
    assert made.shape == x.shape and torch.equal(made, teacher_forced_tokens(gen, x, s, seed=3, steps=5))
    valid = torch.arange(tok.width)[None] < gen.valid[:, None]
    assert torch.all(made[:, ~valid] == 0)
    changed = x.clone()
    changed[:, 2] += 1.0  # token 2's true values reach tokens 3 onwards, never 0..2
    after = teacher_forced_tokens(gen, changed, s, seed=3, steps=5)
    assert torch.equal(after[:, :3], made[:, :3]) and not torch.allclose(after[:, 3:], made[:, 3:])
    positions, _, _ = _standalone(_spec())
    with pytest.raises(GeneratorError, match="recurrent_input: tokens"):
        teacher_forced_tokens(positions, x, s)


def test_teacher_forcing_a_conditional_generator_reads_each_rows_condition():
    gen = _conditional(recurrent_input="tokens")
    x = torch.randn(2, gen.tokenizer.num_tokens, gen.tokenizer.width)
    s, a, b = torch.tensor([0, 1]), code_bits(A).expand(2, -1), code_bits(B).expand(2, -1)
    made = teacher_forced_tokens(gen, x, s, a, seed=3, steps=3)
    assert torch.equal(made, teacher_forced_tokens(gen, x, s, a, seed=3, steps=3))
    assert not torch.allclose(made, teacher_forced_tokens(gen, x, s, b, seed=3, steps=3))  # the code reaches it
    with pytest.raises(GeneratorError, match="needs each row's condition"):
        teacher_forced_tokens(gen, x, s)
    with pytest.raises(GeneratorError, match="takes no conditions"):
        teacher_forced_tokens(_conditional(recurrent_input="tokens", condition="none"), x, s, a)


def test_interpolated_lies_between_two_runs():
    task = get_task("digits")
    stacked = stack_states([dict(build_net("mlp", task.input_shape, task.num_classes, seed=i, hidden=[8]).state_dict())
                            for i in range(6)])
    runs = [0, 0, 1, 1, 2, 2]
    names = ["1.weight", "1.bias"]
    mid = interpolated(stacked, names, runs, 0.5, 20, seed=1)
    ends = interpolated(stacked, names, runs, 0.0, 20, seed=1)
    flat = stacked["1.weight"].flatten(1)
    for i in range(20):
        a = int((flat == ends["1.weight"][i].flatten()).all(1).nonzero())  # weight 0: the first of the pair
        # the other end solves mid = (a + b) / 2 and is an original of another run
        b_flat = 2 * mid["1.weight"][i].flatten() - flat[a]
        b = int(torch.cdist(b_flat[None], flat).argmin())
        torch.testing.assert_close(b_flat, flat[b], atol=1e-5, rtol=0)
        assert runs[a] != runs[b]
        assert torch.equal(mid["3.weight"][i], stacked["3.weight"][a])  # not generated: copied from the first
    assert torch.equal(interpolated(stacked, names, runs, 0.5, 20, seed=1)["1.bias"], mid["1.bias"])
    with pytest.raises(ValueError, match="two runs"):
        interpolated(stacked, names, [0] * 6, 0.5, 4, seed=0)
    with pytest.raises(ValueError, match="run of each"):
        interpolated(stacked, names, runs[:3], 0.5, 4, seed=0)
    with pytest.raises(ValueError, match="weight"):
        interpolated(stacked, names, runs, 1.5, 4, seed=0)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_predict_x0_inverts_each_prediction_type(prediction):
    d = Diffusion(prediction=prediction)
    x0 = torch.randn(5, 1, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 10, 300, 700, 999])
    x_t = d.train_scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(predict_x0(d, _oracle(d, x0)(x_t, t), x_t, t), x0, atol=1e-3, rtol=1e-3)
