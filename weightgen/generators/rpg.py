"""RPG (Wang et al. 2025, "Recurrent Diffusion for Large-Scale Parameter Generation").

Parameters are cut into tokens (the shared tokenizer: per-tensor normalization, tokens
that never span two tensors, padding masked out of the loss). A recurrent model runs
over the token sequence; its input per token is a 2D sinusoidal position embedding (half
the width for the tensor index, half for the index within the tensor) plus the
*permutation state* of the checkpoint's source run (one learned embedding per run, which
lets the model keep apart runs that differ by neuron permutations; at sampling a random
learned state is drawn per sample). Its output per token, the prototype, conditions a
1D conv U-Net that denoises that token alone (``TokenUNet1d``). Training uses a random
subset of each checkpoint's tokens per step; sampling denoises chunks of tokens, so only
one chunk's diffusion state is in memory.

A conditional generator reads one condition per checkpoint. ``condition: task_code``: the
class-subset code of the checkpoint's task (a ``tasks`` zoo), through a learned embedding
of the code's bits. ``condition: metric``: a checkpoint metric (e.g. test loss, embedded
with sin/cos frequency features), so that sampling asks for networks of a given loss,
G.pt's prompt without a start checkpoint. The embedding is added to the recurrent input
of every token (``condition_tokens: all``, ours) or of the last N only (RPG's released
code: 8, so the body of the network cannot depend on the task).

``recurrent_input: tokens`` is the paper's wording (the recurrent model also reads the
parameters): the previous token's clean values, projected, are added to the input;
teacher-forced in training, autoregressive token by token at sampling. The released
code reads positions and states only (``positions``, the default).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
from mambapy.mamba import Mamba, MambaConfig
from torch import nn

from weightgen.config import RPGSpec
from weightgen.diffusion import Diffusion, FrequencyEmbedding, make_ema, timestep_embedding, train_steps
from weightgen.diffusion.token_unet import TokenUNet1d
from weightgen.tasks import TaskCodeError, code_bits, parse_code

from .base import Generator, GeneratorError, member_metric
from .mamba_scan import use_scan
from .registry import GENERATORS

log = logging.getLogger(__name__)


def position_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``(T, dim)`` 2D sinusoidal embedding of token positions ``(T, 2)`` = (tensor, index in tensor):
    the first half of the width embeds the tensor, the second the index within it (RPG's released code)."""
    half = dim // 2
    return torch.cat([timestep_embedding(positions[:, 0], half), timestep_embedding(positions[:, 1], dim - half)], 1)


MAMBA_SCAN_TOKENS = 2048  # longer sequences are scanned step by step when no gradient is needed


class Backbone(nn.Module):
    """The recurrent model over ``(B, T, D)``, plus a one-token ``step`` for autoregressive sampling."""

    def __init__(self, kind: str, d_model: int, layers: int, d_state: int):
        super().__init__()
        self.kind = kind
        if kind == "mamba":
            self.net = use_scan(Mamba(MambaConfig(d_model=d_model, n_layers=layers, d_state=d_state)))
        elif kind == "lstm":
            self.net = nn.LSTM(d_model, d_model, layers, batch_first=True)
        elif kind == "transformer":
            heads = next(h for h in (8, 4, 2, 1) if d_model % h == 0)
            layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.net = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        elif kind == "none":
            self.net = nn.Identity()
        else:
            raise GeneratorError(f"unknown RPG backbone {kind!r}; allowed: mamba, lstm, transformer, none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mamba" and not torch.is_grad_enabled() and x.shape[1] > MAMBA_SCAN_TOKENS:
            # mambapy's parallel scan holds (B, T, 2*d_model, d_state) several times over: for
            # the ~24k tokens of a 200M-parameter net that is gigabytes. Without gradients the
            # recurrence runs token by token instead, in constant memory. The sequential scan
            # (mamba_scan.py) would be faster, but the whole-sequence forward around it still holds
            # each layer's (B, T, 2*d_model) projections, many times the (B, T, D) output kept here, and B
            # is the number of distinct permutation states sampled.
            state = self.begin(x.shape[0], x.device)
            out = torch.empty_like(x)
            for t in range(x.shape[1]):
                out[:, t], state = self.step(x[:, t], state)
            return out
        if self.kind == "lstm":
            return self.net(x)[0]
        if self.kind == "transformer":
            # Causal, so that a token's prototype never depends on later tokens: the teacher-
            # forced training pass then matches autoregressive sampling in ``tokens`` mode.
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
            return self.net(x, mask=mask, is_causal=True)
        return self.net(x)

    def begin(self, batch: int, device: torch.device) -> Any:
        if self.kind == "mamba":
            cfg = self.net.config
            return [(None, torch.zeros(batch, cfg.d_inner, cfg.d_conv - 1, device=device)) for _ in self.net.layers]
        return [] if self.kind == "transformer" else None

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One token ``(B, D)`` -> its output ``(B, D)`` and the state after it."""
        if self.kind == "mamba":
            return self.net.step(x, state)
        if self.kind == "lstm":
            y, state = self.net(x[:, None], state)
            return y[:, 0], state
        if self.kind == "transformer":
            # No KV cache in nn.TransformerEncoder: rerun the (causal) prefix; O(T^2) overall.
            state = [*state, x]
            return self.forward(torch.stack(state, 1))[:, -1], state
        return x, state


def distinct_rows(*columns: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)`` over the rows of the given ``(B, ...)`` tensors (``None`` skipped):
    ``first`` indexes one row of each distinct combination of values, and row i equals row
    ``first[inverse[i]]`` in every column."""
    b = len(columns[0])
    key = torch.cat([c.reshape(b, -1).double() for c in columns if c is not None], 1)  # exact for ints and float32
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), b, device=key.device)
    first = first.scatter_reduce(0, inverse, torch.arange(b, device=key.device), "amin")
    return first, inverse


class RPGNet(nn.Module):
    """Everything RPG learns, in one module so that the EMA (and the optimizer) covers all of it.

    ``conditions`` below are each row's condition: ``(B, L)`` task-code bits, or ``(B,)`` metric
    values, for a conditional generator; ``None`` otherwise."""

    def __init__(self, spec: RPGSpec, positions: torch.Tensor, width: int, num_states: int,
                 code_length: int | None = None):
        super().__init__()
        self.register_buffer("pos", position_embedding(positions, spec.d_model), persistent=False)
        self.states = None
        if spec.permutation_state:
            self.states = nn.Embedding(num_states, spec.d_model)
            nn.init.constant_(self.states.weight, 1.0 / spec.d_model)  # the released code's initialization
        self.token_in = nn.Linear(width, spec.d_model) if spec.recurrent_input == "tokens" else None
        self.condition_in = None
        if spec.condition != "none":
            # task codes: (B, bits) -> linear; metrics: (B,) scalars -> frequency features (as G.pt)
            first = (nn.Linear(code_length, spec.d_model) if spec.condition == "task_code"
                     else FrequencyEmbedding(spec.d_model))
            self.condition_in = nn.Sequential(first, nn.SiLU(), nn.Linear(spec.d_model, spec.d_model))
            t = len(positions)
            last = t if spec.condition_tokens == "all" else min(spec.condition_tokens, t)
            self.register_buffer("reach", (torch.arange(t) >= t - last).float()[:, None], persistent=False)
        self.backbone = Backbone(spec.backbone, spec.d_model, spec.layers, spec.mamba_d_state)
        self.denoiser = TokenUNet1d(width, spec.d_model, tuple(spec.unet_channels), spec.kernel_size)
        self.register_load_state_dict_pre_hook(_condition_in_was_code_in)

    def inputs(self, states: torch.Tensor, tokens: torch.Tensor | None = None,
               conditions: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, D)`` recurrent inputs of the rows' permutation states ``(B,)`` (run indices);
        ``tokens`` ``(B, T, W)`` are shifted by one (teacher forcing)."""
        x = self.pos.unsqueeze(0).expand(len(states), -1, -1)
        if self.states is not None:
            x = x + self.states(states)[:, None]
        if self.condition_in is not None:
            x = x + self.reach * self.condition_in(conditions)[:, None]
        if self.token_in is not None:
            prev = nn.functional.pad(tokens[:, :-1], (0, 0, 1, 0))  # token t reads token t-1; the first reads 0
            x = x + self.token_in(prev)
        return x

    def prototypes(self, states: torch.Tensor, tokens: torch.Tensor | None = None,
                   conditions: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, D)`` prototypes. Without ``tokens`` a row's prototypes depend on its permutation
        state and condition alone, so rows that share both share one recurrent pass (and its
        gradient): checkpoints of one run, as in RPG's fine-tuning zoos, cost one sequence, not B."""
        if tokens is not None:
            return self.backbone(self.inputs(states, tokens, conditions))
        first, inverse = distinct_rows(states, conditions)
        if len(first) == len(states):
            return self.backbone(self.inputs(states, None, conditions))
        once = None if conditions is None else conditions[first]
        return self.backbone(self.inputs(states[first], None, once))[inverse]

    def step_input(self, states: torch.Tensor, t: int, prev: torch.Tensor,
                   conditions: torch.Tensor | None = None) -> torch.Tensor:
        """The recurrent input of token ``t`` for each sample, given the previous token ``(B, W)``."""
        x = self.pos[t].expand(len(states), -1)
        if self.states is not None:
            x = x + self.states(states)
        if self.condition_in is not None:
            x = x + self.reach[t] * self.condition_in(conditions)
        return x + self.token_in(prev)


def _condition_in_was_code_in(module, state_dict, prefix, *_) -> None:
    """Weights saved with the condition embedding under its former name, ``code_in``, load into ``condition_in``."""
    old = prefix + "code_in."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "condition_in." + key[len(old):]] = state_dict.pop(key)


# Memory for the denoiser's activations while sampling one chunk of tokens.
SAMPLE_ACTIVATION_BYTES = 256 * 2**20


@GENERATORS.register("rpg")
class RPG(Generator):
    method = "rpg"
    spec_class = RPGSpec
    spec: RPGSpec

    def __init__(self, spec, tokenizer, reference, net_build, runs: list[int] | None = None, layout=None,
                 code_length: int | None = None, device: str = "auto"):
        """``runs``: the zoo run ids, one permutation state each; ``code_length``: the bits of the
        task codes a ``task_code`` generator reads. ``from_zoo`` takes both from the zoo."""
        self.runs = list(runs or [0])
        # each run's training seed, in the order of ``runs``: run ids restart at 0 in every zoo,
        # so only the seeds tell two zoos' runs apart (None: not recorded with the generator)
        self.run_seeds: list[int] | None = None
        self.code_length = code_length
        self.metric_range: list[float] | None = None  # the metric values seen in training (condition: metric)
        super().__init__(spec, tokenizer, reference, net_build, layout, device)

    def build_components(self) -> None:
        if self.tokenizer.flat:
            raise GeneratorError("RPG generates tokens of a fixed size: set tokenizer.token_size to an integer "
                                 "(the paper uses 8192), not 'flat'")
        if self.spec.condition == "task_code" and not self.code_length:
            raise GeneratorError("condition 'task_code' needs the length of the task codes: build the generator "
                                 "with RPG.from_zoo on a tasks zoo (or give code_length)")
        s = self.spec
        # Initialized from a fixed seed, apart from the global RNG: the same spec always
        # starts from the same weights, whatever ran before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = RPGNet(s, self.tokenizer.positions, self.tokenizer.width, len(self.runs),
                              self.code_length).to(self.device)
        self.ema = make_ema(self.net, s.ema, s.ema_warmup)
        # Real values per token (the rest is padding): masks of chosen tokens without holding a
        # (tokens x width) mask, which would cost a byte per parameter of a large network.
        self.valid = self.tokenizer.valid_counts
        self.diffusion = Diffusion.from_spec(s.diffusion)

    def components(self) -> dict[str, nn.Module]:
        return {"net": self.net, **({"ema": self.ema} if self.ema is not None else {})}

    def extra_meta(self) -> dict:
        return {"runs": self.runs, "run_seeds": self.run_seeds, "code_length": self.code_length,
                "metric_range": self.metric_range}

    def load_extra_meta(self, meta: dict) -> None:
        self.runs = list(meta.get("runs") or [0])
        self.run_seeds = meta.get("run_seeds")
        self.code_length = meta.get("code_length")
        self.metric_range = meta.get("metric_range")

    # -- what the zoo decides: one permutation state per training run, the task codes' length ------
    @classmethod
    def from_zoo(cls, spec, zoo, tokenizer_spec, device: str = "auto") -> "RPG":
        facts = zoo_facts(spec, zoo)
        gen = super().from_zoo(spec, zoo, tokenizer_spec, device, runs=facts["runs"], code_length=facts["code_length"])
        gen.run_seeds, gen.metric_range = facts["run_seeds"], facts["metric_range"]
        return gen

    def use_zoo(self, zoo) -> None:
        """Check that ``zoo`` is of this net, with the training runs (and task-code length) the networks
        were built for, and take its runs' seeds and metric range."""
        self.check_zoo(zoo)
        facts = zoo_facts(self.spec, zoo)
        if facts["runs"] != self.runs:
            raise GeneratorError(f"this generator has permutation states for {_runs(self.runs)}, {zoo.root} has "
                                 f"training {_runs(facts['runs'])}: build it with RPG.from_zoo on that zoo")
        if facts["code_length"] != self.code_length:
            raise GeneratorError(f"this generator reads task codes of {self.code_length} bits; {zoo.root} has "
                                 f"codes of {facts['code_length']}: build it with RPG.from_zoo on that zoo")
        self.run_seeds, self.metric_range = facts["run_seeds"], facts["metric_range"]

    def start_from(self, other: "RPG", source: str) -> None:
        # A state's embedding belongs to one run: the same number of runs is not enough.
        if other.runs != self.runs:
            raise GeneratorError(f"init_from {source}: its permutation states are runs {other.runs}, "
                                 f"this zoo's training runs are {self.runs}")
        if None not in (other.run_seeds, self.run_seeds) and other.run_seeds != self.run_seeds:
            raise GeneratorError(f"init_from {source}: its permutation states are runs trained from seeds "
                                 f"{other.run_seeds}, this zoo's training runs have seeds {self.run_seeds}; the "
                                 f"same run ids in another zoo are other runs")
        super().start_from(other, source)

    def member_conditions(self, members) -> torch.Tensor | None:
        """Each member's condition: ``(M, L)`` task-code bits, ``(M,)`` metric values, or ``None``."""
        if self.spec.condition == "task_code":
            return torch.stack([code_bits(m.condition["code"]) for m in members])
        if self.spec.condition == "metric":
            return torch.tensor([member_metric(m, self.spec.metric) for m in members], dtype=torch.float32)
        return None

    def resolve_condition(self, condition: Any) -> torch.Tensor | None:
        """What the generator is conditioned on, checked: a task code (``'0100100001'``, a list of
        bits, or ``{'code': ...}``) -> its bits ``(L,)``; a metric value -> a 0-d tensor; ``None``
        for an unconditional generator (which refuses anything else)."""
        if self.spec.condition == "none":
            return super().resolve_condition(condition)
        if self.spec.condition == "metric":
            return self._metric_condition(condition)
        if condition is None:
            raise GeneratorError("this RPG generator is conditioned on task codes: give one "
                                 "(e.g. `--task-code 0100100001` or `--classes 1,4,9`)")
        code = condition.get("code") if isinstance(condition, dict) else condition
        try:
            code = parse_code(code, self.code_length)
        except TaskCodeError as e:
            raise GeneratorError(str(e)) from None
        return code_bits(code).to(self.device)

    def state_index(self, members) -> torch.Tensor:
        """The permutation state of each zoo member: its run's index among the training runs."""
        index = {r: i for i, r in enumerate(self.runs)}
        try:
            return torch.tensor([index[m.run] for m in members], dtype=torch.long)
        except KeyError as e:
            raise GeneratorError(f"run {e.args[0]} has no permutation state (not a training run of "
                                 f"this generator); the generator knows {_runs(self.runs)}") from None

    def _metric_condition(self, condition: Any) -> torch.Tensor:
        """A metric value (a number, or ``{'metric': value}``) -> a 0-d tensor; outside the
        training range it is used but warned about (the model has seen nothing there)."""
        value = condition.get("metric") if isinstance(condition, dict) else condition
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise GeneratorError(f"this RPG generator is conditioned on {self.spec.metric}: give the value wanted "
                                 f"(a number, e.g. {self.metric_range[0]:.4g}), not {condition!r}") from None
        lo, hi = self.metric_range
        if not lo <= value <= hi:
            log.warning("%s = %.4g is outside what the zoo covers (%.4g to %.4g): the networks are extrapolated",
                        self.spec.metric, value, lo, hi)
        return torch.tensor(value, device=self.device)

    # -- training ----------------------------------------------------------------------------
    def loss(self, tokens: torch.Tensor, states: torch.Tensor, gen: torch.Generator,
             noise_gen: torch.Generator | None = None, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Masked diffusion loss on ``tokens_per_step`` random tokens of each checkpoint ``(B, T, W)``.

        The recurrent model runs over the whole sequence; only the chosen tokens are denoised.
        ``gen`` (CPU) picks the tokens; ``noise_gen`` (on the device) draws times and noise.
        """
        b, t, w = tokens.shape
        k = min(self.spec.tokens_per_step, t)
        chosen = torch.rand(b, t, generator=gen).argsort(1)[:, :k]  # (B, k), distinct per row
        mask = (torch.arange(w) < self.valid[chosen, None]).to(tokens.device).reshape(b * k, 1, w)
        pick = chosen.to(tokens.device)
        read = tokens if self.spec.recurrent_input == "tokens" else None
        proto = self.net.prototypes(states, read, conditions)
        x0 = tokens.gather(1, pick[..., None].expand(-1, -1, w)).reshape(b * k, 1, w)
        cond = proto.gather(1, pick[..., None].expand(-1, -1, proto.shape[-1])).reshape(b * k, -1)
        return self.diffusion.loss(self.train_denoise, x0, mask, noise_gen, batch_args=(cond,))

    def train_denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser in training, under bfloat16 autocast when ``denoiser_precision`` asks
        (its output back in float32, so the loss and everything after it are float32)."""
        if self.spec.denoiser_precision == "float32":
            return self.net.denoiser(x, t, cond)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.net.denoiser(x, t, cond).float()

    def fit(self, zoo, show_progress: bool = True, seed: int = 0) -> dict[str, Any]:
        s = self.spec
        self.use_zoo(zoo)
        members = zoo.members("train")
        tokens = self.training_tokens(zoo).to(self.device)  # (M, T, W)
        states = self.state_index(members).to(self.device)
        conditions = self.member_conditions(members)
        conditions = conditions.to(self.device) if conditions is not None else None
        gen = torch.Generator().manual_seed(seed)
        noise_gen = torch.Generator(self.device).manual_seed(seed)
        bs = min(s.batch_size, len(tokens))

        def step_loss(_: int) -> torch.Tensor:
            idx = torch.randperm(len(tokens), generator=gen)[:bs].to(self.device)
            return self.loss(tokens[idx], states[idx], gen, noise_gen,
                             conditions[idx] if conditions is not None else None)

        losses = train_steps(self.net, step_loss, s.steps, s.lr, s.weight_decay, ema=self.ema, desc="RPG",
                             show_progress=show_progress, lr_schedule=s.lr_schedule,
                             rngs={"batches": gen, "noise": noise_gen})
        return {"diffusion_loss": losses[-1] if losses else None, "num_train": len(tokens),
                "num_tokens": self.tokenizer.num_tokens, "num_states": len(self.runs)}

    # -- sampling ----------------------------------------------------------------------------
    def _denoise(self, net: RPGNet, cond: torch.Tensor, seeds: torch.Tensor, sampler: str,
                 steps: int | None) -> torch.Tensor:
        """Reverse diffusion of one chunk of tokens ``(c, 1, W)`` given their prototypes ``(c, D)``.

        Every token draws all its noise (initial and per step) from its own generator, seeded
        by its (sample, token) index: a token's result does not depend on the chunking.
        """
        gens = [torch.Generator().manual_seed(int(v)) for v in seeds]
        x = self.diffusion.sample(lambda x_t, t: net.denoiser(x_t, t, cond), (len(cond), 1, self.tokenizer.width),
                                  gens, sampler, steps, device=self.device, temperature=self.spec.diffusion.temperature)
        return x[:, 0]

    def chunk_size(self) -> int:
        """Tokens denoised at once: ``sample_chunk``, lowered so the denoiser's activations
        stay within ``SAMPLE_ACTIVATION_BYTES`` (wide tokens of a large net)."""
        per_token = self.net.denoiser.activation_bytes_per_token()
        return max(1, min(self.spec.sample_chunk, SAMPLE_ACTIVATION_BYTES // per_token))

    def _pieces(self, n: int, condition: Any, generator: torch.Generator, sampler: str,
                steps: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Denoised tokens as ``(sample indices, token indices, (c, width) values)``, chunk by
        chunk, in (sample, token) order: the only copy of the diffusion state is one chunk's."""
        code = self.resolve_condition(condition)
        net = self.sampling_module(self.net)
        T, W, chunk = self.tokenizer.num_tokens, self.tokenizer.width, self.chunk_size()
        base = int(torch.randint(0, 2**62, (1,), generator=generator))
        states = self.sample_states(n, generator)
        if self.spec.recurrent_input == "positions":
            # Prototypes depend on the permutation state only: one sequence per distinct state.
            first, which = distinct_rows(states)
            used = states[first]
            conditions = None if code is None else code.expand(len(used), *code.shape)
            proto = net.prototypes(used, conditions=conditions)  # (U, T, D)
            yield from self.denoise_table(net, proto, which, base, sampler, steps)
            return
        # tokens: autoregressive, token by token (a token's prototype needs its predecessor's values).
        conditions = None if code is None else code.expand(n, *code.shape)
        state = net.backbone.begin(n, self.device)
        prev = torch.zeros(n, W, device=self.device)
        for t in range(T):
            cond, state = net.backbone.step(net.step_input(states, t, prev, conditions), state)
            real = (torch.arange(W) < self.valid[t]).float().to(self.device)  # fed back as in training: zero padding
            for start in range(0, n, chunk):
                rows = torch.arange(start, min(start + chunk, n))
                prev[rows] = self._denoise(net, cond[rows.to(self.device)], base + rows * T + t, sampler, steps) * real
                yield rows, torch.full_like(rows, t), prev[rows].cpu()

    def sample_states(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The permutation state of each of ``n`` samples: a random training run's index ``(n,)``,
        as in the released code."""
        return torch.randint(len(self.runs), (n,), generator=generator).to(self.device)

    def denoise_table(self, net: RPGNet, proto: torch.Tensor, which: torch.Tensor, base: int, sampler: str,
                      steps: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every token of ``len(which)`` samples denoised from a prototype table ``(U, T, D)``: sample
        s's token t from ``proto[which[s], t]`` and the noise of index ``base + s * T + t``; yielded
        chunk by chunk as in ``_pieces``."""
        T, n, chunk = self.tokenizer.num_tokens, len(which), self.chunk_size()
        for start in range(0, n * T, chunk):
            ids = torch.arange(start, min(start + chunk, n * T))
            s, t = ids // T, ids % T
            rows, cols = which[s.to(self.device)], t.to(self.device)
            yield s, t, self._denoise(net, proto[rows, cols], base + ids, sampler, steps).cpu()

    @torch.no_grad()
    def sample_tokens(self, n: int, condition: Any, generator: torch.Generator, sampler: str = "ddpm",
                      steps: int | None = None) -> torch.Tensor:
        out = torch.empty(n, self.tokenizer.num_tokens, self.tokenizer.width)
        for s, t, values in self._pieces(n, condition, generator, sampler, steps):
            out[s, t] = values
        return out

    @torch.no_grad()
    def stream_tokens(self, condition: Any, generator: torch.Generator, sampler: str = "ddpm",
                      steps: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        # One sample: every chunk is a run of consecutive tokens.
        for _, t, values in self._pieces(1, condition, generator, sampler, steps):
            yield int(t[0]), values


def zoo_facts(spec: RPGSpec, zoo) -> dict[str, Any]:
    """What an RPG generator takes from its zoo: the training ``runs`` (one permutation state each)
    and their ``run_seeds``, the ``code_length`` of a ``task_code`` generator's codes, and the
    ``metric_range`` a ``metric`` generator saw (None where they do not apply)."""
    members = zoo.members("train")
    if not members:
        raise GeneratorError(f"{zoo.root}: no finished training checkpoints to fit on")
    runs = sorted({m.run for m in members})
    seed_of = {m.run: m.seed for m in members}
    facts = {"runs": runs, "run_seeds": [seed_of[r] for r in runs], "code_length": None, "metric_range": None}
    if spec.condition == "task_code":
        lengths = {len(m.condition.get("code") or "") for m in members}
        if 0 in lengths or len(lengths) != 1:
            raise GeneratorError(f"condition 'task_code' needs a zoo whose every checkpoint has a task code "
                                 f"(zoo.mode: tasks); {zoo.root} has checkpoints without one")
        facts["code_length"] = lengths.pop()
    if spec.condition == "metric":
        values = [member_metric(m, spec.metric) for m in members]
        facts["metric_range"] = [min(values), max(values)]
    return facts


def _runs(runs: list[int]) -> str:
    """Run ids for an error message: all of them, or the first few and the last of a long list."""
    return f"runs {runs}" if len(runs) <= 12 else f"{len(runs)} runs ({', '.join(map(str, runs[:5]))}, ..., {runs[-1]})"
