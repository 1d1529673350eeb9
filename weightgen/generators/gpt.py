"""G.pt (Peebles et al. 2022, "Learning to Learn with Generative Models of Neural Network Checkpoints").

A conditional diffusion model of parameter updates. It trains on pairs (theta, theta') from one run
of a ``trajectory`` zoo, theta' the later checkpoint (weightgen/generators/gpt_pairs.py), and denoises
theta' given theta, theta's metric and the target metric. Sampling takes a prompt: a start
checkpoint, its metric and the metric wanted.

The transformer reads one token per chunk of noisy theta' and of theta, each position with its own
linear encoder, then one token each for the two metrics and the timestep. Each theta' position has
its own output head, started at zero, and the x0 prediction is theta plus the heads' output, so an
untrained model predicts "no update" (v prediction: ``GPTNet.forward``). ``architecture: units`` and
``graph`` read hidden units instead of chunks (weightgen/generators/gpt_units.py). Permutation
augmentation permutes the hidden units of both checkpoints of a pair alike, on the denormalized
tensors, then tokenizes the pair again. Evidence: docs/results.md, 'Prompted metrics'.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from weightgen.config import GPTSpec
from weightgen.diffusion import Diffusion, FrequencyEmbedding, make_ema, timestep_embedding, train_steps
from weightgen.nets.permute import HiddenGroup, PermutationError, permute_batch, random_permutations
from weightgen.nets.symmetry import AUGMENTATION, permutation_groups
from weightgen.tokens import TokenizerError

from .base import Generator, GeneratorError, member_metric
from .gpt_pairs import PairSampler, pair_count, training_runs
from .gpt_units import UnitGPTNet, UnitIndex
from .registry import GENERATORS

log = logging.getLogger(__name__)

PROMPT_KEYS = ("start", "start_metric", "target_metric")
PROMPT_HELP = ("G.pt generates from a prompt: pass condition={'start': a state_dict of the zoo's net (full, or "
               "only the generated tensors), 'start_metric': its metric, 'target_metric': the metric wanted, "
               "or a list of one per network}. "
               "`weightgen run` has no prompt to give: use `weightgen sample GENERATOR --start ckpt.safetensors "
               "--start-metric X --target-metric Y`, or Python (benchmarks/gpt_prompt.py)")


def _finite(value: Any, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GeneratorError(f"condition {key!r} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise GeneratorError(f"condition {key!r} must be finite, got {number}")
    return number


class TokenLinear(nn.Module):
    """A separate linear map per token position, as one ``(T, in, out)`` weight: ``(B, T, in) -> (B, T, out)``."""

    def __init__(self, tokens: int, d_in: int, d_out: int, zero: bool = False):
        super().__init__()
        bound = 0.0 if zero else 1.0 / math.sqrt(d_in)  # nn.Linear's default range
        self.weight = nn.Parameter(torch.empty(tokens, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(tokens, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bti,tio->bto", x, self.weight) + self.bias


class GPTNet(nn.Module):
    """Everything G.pt learns, in one module so that the EMA (and the optimizer) covers all of it."""

    def __init__(self, spec: GPTSpec, tokens: int, width: int, alphas_cumprod: torch.Tensor,
                 units: UnitIndex | None = None):
        super().__init__()
        d = spec.d_model
        self.tokens = tokens
        self.prediction = spec.diffusion.prediction  # how theta enters the output (``forward``)
        self.register_buffer("abar", alphas_cumprod.float(), persistent=False)
        self.units = None
        if units is None:  # published: per-chunk encoders (made first: the order the seed gives weights in)
            self.noisy_in = TokenLinear(tokens, width, d)
            self.start_in = TokenLinear(tokens, width, d)
        self.start_metric_in = FrequencyEmbedding(d)
        self.target_metric_in = FrequencyEmbedding(d)
        self.time_in = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        if units is not None:  # ``architecture: units`` or ``graph``: weightgen/generators/gpt_units.py
            self.units = UnitGPTNet(units, d, spec.heads, spec.layers, tokens, width,
                                    bilinear_edges=spec.edge_input == "bilinear")
            self.scalar_pos = nn.Parameter(0.02 * torch.randn(3, d))
            return
        self.pos = nn.Parameter(0.02 * torch.randn(2 * tokens + 3, d))
        layer = nn.TransformerEncoderLayer(d, spec.heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, spec.layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = TokenLinear(tokens, d, width, zero=True)  # zero: the model starts as the identity

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, start: torch.Tensor, start_metric: torch.Tensor,
                target_metric: torch.Tensor) -> torch.Tensor:
        """Prediction for theta' ``(B, T, W)`` from its noisy tokens, the timestep, theta's tokens and both
        metrics. x0 (published): theta + heads. v: heads - sqrt(1 - abar_t) theta, whose implied theta' for
        zero heads is (1 - abar_t) theta + sqrt(abar_t) x_t, theta at pure noise and the input near the data.
        epsilon: the heads alone."""
        d = self.time_in[0].in_features
        scalars = torch.stack([self.start_metric_in(start_metric), self.target_metric_in(target_metric),
                               self.time_in(timestep_embedding(t, d))], 1)
        if self.units is not None:
            out = self.units(noisy, start, scalars + self.scalar_pos)
        else:
            x = torch.cat([self.noisy_in(noisy), self.start_in(start), scalars], 1)
            out = self.head(self.blocks(x + self.pos)[:, : self.tokens])
        if self.prediction == "sample":
            return start + out
        if self.prediction == "v_prediction":
            return out - (1 - self.abar[t].view(-1, 1, 1)).sqrt() * start
        return out


@dataclass
class Prompt:
    """A checked condition: theta's tokens ``(T, W)``, both metrics, and the entries not
    generated. ``target_metric`` is one value for every network, or an ``(n,)`` tensor of
    one per network."""

    start: torch.Tensor
    start_metric: float
    target_metric: float | torch.Tensor
    fixed: dict[str, torch.Tensor]

    def targets(self, n: int) -> torch.Tensor:
        """``(n,)`` the target of each of ``n`` networks."""
        if isinstance(self.target_metric, torch.Tensor):
            if len(self.target_metric) != n:
                raise GeneratorError(f"the prompt gives {len(self.target_metric)} target metrics, one per network, "
                                     f"but {n} networks were asked for")
            return self.target_metric
        return torch.full((n,), self.target_metric)


@GENERATORS.register("gpt")
class GPT(Generator):
    method = "gpt"
    spec_class = GPTSpec
    spec: GPTSpec
    needs_prompt: ClassVar[str] = PROMPT_HELP  # read by pipeline.run_experiment, which has no prompt to give

    def __init__(self, spec, tokenizer, reference, net_build, layout=None,
                 metric_range: tuple[float, float] | None = None, device: str = "auto"):
        self.metric_range = tuple(metric_range) if metric_range is not None else None
        super().__init__(spec, tokenizer, reference, net_build, layout, device)

    def build_components(self) -> None:
        s = self.spec
        # The permutable hidden layers, found now so that an unsupported net fails before any fitting.
        # Where the units architecture is exactly equivariant to them, augmenting would change nothing
        # but the cost (weightgen/generators/gpt_units.py).
        units = self.unit_index() if s.architecture in ("units", "graph") else None
        exact = units is not None and units.exact
        self.groups = self.permutation_groups() if s.permutation_augmentation and not exact else []
        self.diffusion = Diffusion.from_spec(s.diffusion)
        with torch.random.fork_rng(devices=[]):  # the same spec always starts from the same weights
            torch.manual_seed(0)
            self.net = GPTNet(s, self.tokenizer.num_tokens, self.tokenizer.width,
                              self.diffusion.train_scheduler.alphas_cumprod, units).to(self.device)
        self.ema = make_ema(self.net, s.ema, s.ema_warmup)

    def components(self) -> dict[str, nn.Module]:
        return {"net": self.net, **({"ema": self.ema} if self.ema is not None else {})}

    def extra_meta(self) -> dict:
        return {"metric_range": list(self.metric_range) if self.metric_range is not None else None}

    def load_extra_meta(self, meta: dict) -> None:
        r = meta.get("metric_range")
        self.metric_range = tuple(r) if r is not None else None

    def unit_index(self) -> UnitIndex:
        """Unit tokens for ``architecture: units`` and ``graph``: every hidden layer of the net (a value
        of it that is not generated is simply not in its units' tokens); with ``graph``, the weights
        between two hidden layers as edges."""
        if self.tokenizer.normalize == "element":
            raise GeneratorError(f"gpt architecture '{self.spec.architecture}' needs one normalization per tensor "
                                 "(tokenizer.normalize: tensor or none): per-element statistics differ between "
                                 "hidden units, so the model could not treat them alike; got 'element'")
        if self.tokenizer.kept:
            raise GeneratorError(f"gpt architecture '{self.spec.architecture}' reads whole tensors, and "
                                 "tokenizer.mask: shared keeps only some entries; use architecture: chunks or "
                                 "tokenizer.mask: generated")
        groups = self.net_groups((f"G.pt's architecture '{self.spec.architecture}'", "generator.architecture: chunks"))
        index = UnitIndex(self.tokenizer, groups, edges=self.spec.architecture == "graph")
        if not index.units:
            raise GeneratorError(f"gpt architecture '{self.spec.architecture}': no generated tensor belongs to a hidden unit "
                                 f"(generated: {', '.join(self.tokenizer.names)}); use architecture: chunks")
        return index

    def net_groups(self, use: tuple[str, str]) -> list[HiddenGroup]:
        """Every hidden layer of the net (``weightgen.nets.symmetry``: hand-written, declared or
        traced); a net without them is refused naming ``use`` (what needs them, the setting that
        turns it off)."""
        if getattr(self, "_net_groups", None) is None:  # a net outside the table is built and traced once
            shapes = {k: shape for k, (shape, _) in self.layout.items()}
            try:
                self._net_groups = permutation_groups(self.net_build, shapes, build=self.build_net, uses=(use,))
            except PermutationError as e:
                raise GeneratorError(str(e)) from None
        return self._net_groups

    def permutation_groups(self) -> list[HiddenGroup]:
        """Hidden layers whose every parameter is generated. A layer that touches a parameter
        taken from the start checkpoint unchanged is left alone: permuting only part of it
        would change the network's function. Buffers follow whatever is generated."""
        groups = self.net_groups(AUGMENTATION)
        generated = set(self.tokenizer.names)
        usable = [g for g in groups if all(a.name in generated for a in g.axes if not a.buffer)]
        if len(usable) < len(groups):
            log.warning("permutation augmentation: %d of %d hidden layers touch parameters that are not generated "
                        "and stay unpermuted", len(groups) - len(usable), len(groups))
        return usable

    # -- training data ----------------------------------------------------------------------
    def use_zoo(self, zoo) -> list:
        """Check the zoo against the generator; remember the range of its training metrics."""
        self.check_zoo(zoo)
        members = zoo.members("train")
        values = [member_metric(m, self.spec.metric) for m in members]
        if values:
            self.metric_range = (min(values), max(values))
        return members

    @classmethod
    def from_zoo(cls, spec, zoo, tokenizer_spec, device: str = "auto") -> "GPT":
        gen = super().from_zoo(spec, zoo, tokenizer_spec, device)
        gen.use_zoo(zoo)
        return gen

    def pair_tokens(self, stacked: dict[str, torch.Tensor], pairs: torch.Tensor,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(B, T, W)`` of theta and theta' for ``pairs`` ``(B, 2)``, one random permutation
        of hidden units per pair, the same for both of its checkpoints."""
        a = {k: v[pairs[:, 0]] for k, v in stacked.items()}
        b = {k: v[pairs[:, 1]] for k, v in stacked.items()}
        if self.groups:
            perms = random_permutations(self.groups, len(pairs), gen)
            a, b = permute_batch(a, self.groups, perms), permute_batch(b, self.groups, perms)
        return tuple(self.tokenizer.tokenize_batch({k: v[i] for k, v in s.items()} for i in range(len(pairs)))
                     for s in (a, b))

    def loss(self, start: torch.Tensor, target: torch.Tensor, start_metric: torch.Tensor,
             target_metric: torch.Tensor, noise_gen: torch.Generator | None = None) -> torch.Tensor:
        """Diffusion loss of theta' ``target`` given theta ``start``; padding is masked out."""
        mask = self.tokenizer.mask.to(target.device)
        return self.diffusion.loss(self.net, target, mask, noise_gen, batch_args=(start, start_metric, target_metric))

    def fit_pairs(self, stacked: dict[str, torch.Tensor], metrics: torch.Tensor, runs: list[list[int]],
                  show_progress: bool = True, seed: int = 0) -> list[float]:
        """Train on checkpoints ``stacked`` (``name -> (M, *shape)``, the generated tensors) with
        ``metrics`` ``(M,)``, pairs (theta, theta') drawn from ``runs`` (chains of indices into
        the checkpoints, one per run, in step order) by ``PairSampler``; returns the losses."""
        s = self.spec
        sampler = PairSampler(runs, metrics, s.balance_targets)
        gen = torch.Generator().manual_seed(seed)
        noise_gen = torch.Generator(self.device).manual_seed(seed)
        tokens = None
        if not self.groups:  # no augmentation: every checkpoint is tokenized once
            m = len(metrics)
            tokens = self.tokenizer.tokenize_batch({k: v[i] for k, v in stacked.items()} for i in range(m))
            tokens = tokens.to(self.device)
        metrics = metrics.to(self.device)

        def step_loss(_: int) -> torch.Tensor:
            picked = sampler.sample(min(s.batch_size, len(sampler)), gen)
            p = picked.to(self.device)
            if tokens is None:  # a fresh permutation per pair and step
                start, target = (t.to(self.device) for t in self.pair_tokens(stacked, picked, gen))
            else:
                start, target = tokens[p[:, 0]], tokens[p[:, 1]]
            return self.loss(start, target, metrics[p[:, 0]], metrics[p[:, 1]], noise_gen)

        return train_steps(self.net, step_loss, s.steps, s.lr, s.weight_decay, ema=self.ema, desc="G.pt",
                           show_progress=show_progress, grad_clip=s.grad_clip, lr_schedule=s.lr_schedule,
                           rngs={"batches": gen, "noise": noise_gen})

    def fit(self, zoo, show_progress: bool = True, seed: int = 0) -> dict[str, Any]:
        members = self.use_zoo(zoo)
        names = self.tokenizer.names
        states = [zoo.load(m, names) for m in members]
        stacked = {k: torch.stack([st[k] for st in states]) for k in names}
        metrics = torch.tensor([member_metric(m, self.spec.metric) for m in members], dtype=torch.float32)
        runs = training_runs(members)
        losses = self.fit_pairs(stacked, metrics, runs, show_progress, seed)
        return {"diffusion_loss": losses[-1] if losses else None, "num_train": len(members),
                "num_pairs": pair_count(runs), "balance_targets": self.spec.balance_targets,
                "num_tokens": self.tokenizer.num_tokens, "metric": self.spec.metric,
                "metric_range": list(self.metric_range) if self.metric_range else None,
                "permuted_layers": len(self.groups), "architecture": self.spec.architecture}

    # -- prompts and sampling ---------------------------------------------------------------
    def resolve_condition(self, condition: Any) -> Prompt:
        """``{'start': state_dict, 'start_metric': float, 'target_metric': float}`` -> a checked ``Prompt``."""
        if isinstance(condition, Prompt):
            return condition
        if condition is None:
            raise GeneratorError(PROMPT_HELP)
        if not isinstance(condition, dict):
            raise GeneratorError(f"a G.pt condition is a dict with keys {', '.join(PROMPT_KEYS)}; "
                                 f"got {type(condition).__name__}")
        missing = [k for k in PROMPT_KEYS if k not in condition]
        if missing:
            raise GeneratorError(f"the G.pt condition lacks {', '.join(repr(k) for k in missing)}; "
                                 f"it needs {', '.join(PROMPT_KEYS)}")
        unknown = [k for k in condition if k not in PROMPT_KEYS]
        if unknown:
            raise GeneratorError(f"the G.pt condition has unknown key {unknown[0]!r}; "
                                 f"allowed: {', '.join(PROMPT_KEYS)}")
        start = condition["start"]
        if not isinstance(start, dict):
            raise GeneratorError(f"condition 'start' must be a state_dict (name -> tensor), got {type(start).__name__}")
        if set(start) <= set(self.tokenizer.names):  # only the generated tensors
            try:
                self.tokenizer.check(start, "start checkpoint")
            except TokenizerError as e:
                raise GeneratorError(f"generator does not match the start checkpoint: {e}") from None
            fixed = self.reference
        else:  # a full state_dict: every entry must fit the net
            self.check_state(start, "start checkpoint")
            fixed = {k: start[k].detach().cpu() for k in self.reference}
        start_metric = _finite(condition["start_metric"], "start_metric")
        target = condition["target_metric"]
        many = isinstance(target, (list, tuple)) or (isinstance(target, torch.Tensor) and target.dim() == 1)
        targets = [_finite(v, "target_metric") for v in target] if many else [_finite(target, "target_metric")]
        if not targets:
            raise GeneratorError("condition 'target_metric' is an empty list: give one number, or one per network")
        if self.metric_range is not None:
            lo, hi = self.metric_range
            outside = [v for v in targets if not lo <= v <= hi]
            if outside:
                log.warning("target %s %.4g is outside the range the training checkpoints cover [%.4g, %.4g]; "
                            "G.pt extrapolates there", self.spec.metric, outside[0], lo, hi)
        generated = {k: start[k] for k in self.tokenizer.names}
        return Prompt(self.tokenizer.tokenize(generated), start_metric,
                      torch.tensor(targets, dtype=torch.float32) if many else targets[0], fixed)

    def condition_rows(self, condition: Any, start: int, stop: int) -> Any:
        """A prompt with one target per network passes the targets of samples ``start:stop``."""
        if isinstance(condition, Prompt) and isinstance(condition.target_metric, torch.Tensor):
            return replace(condition, target_metric=condition.target_metric[start:stop])
        return condition

    @torch.no_grad()
    def sample_tokens(self, n: int, condition: Any, generator: torch.Generator, sampler: str = "ddpm",
                      steps: int | None = None) -> torch.Tensor:
        prompt = self.resolve_condition(condition)
        net = self.sampling_module(self.net)
        start = prompt.start.to(self.device).expand(n, -1, -1)
        sm = torch.full((n,), prompt.start_metric, device=self.device)
        tm = prompt.targets(n).to(self.device)
        x = self.diffusion.sample(lambda x_t, t: net(x_t, t, start, sm, tm), (n, *start.shape[1:]), generator,
                                  sampler, steps, device=self.device, temperature=self.spec.diffusion.temperature)
        return x.cpu()

    @torch.no_grad()
    def sample(self, n: int, condition: Any = None, seed: int = 0, batch_size: int = 100, sampler: str = "ddpm",
               steps: int | None = None, first: int = 0):
        """As ``Generator.sample``; entries that are not generated come from the start checkpoint
        (when the prompt gives a full one), not from the zoo's reference: G.pt updates *that* network."""
        prompt = self.resolve_condition(condition)
        prompt.targets(n)  # one target, or one per network
        for states in super().sample(n, prompt, seed, batch_size, sampler, steps, first):
            b = next(iter(states.values())).shape[0]
            yield {k: prompt.fixed[k].unsqueeze(0).expand(b, *prompt.fixed[k].shape) if k in prompt.fixed else v
                   for k, v in states.items()}

    @torch.no_grad()
    def sample_to_file(self, path, condition: Any = None, seed: int = 0, sampler: str = "ddpm",
                       steps: int | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        prompt = self.resolve_condition(condition)
        prompt.targets(1)  # one network: one target
        reference, self.reference = self.reference, prompt.fixed  # the file's fixed entries: the start's
        try:
            return super().sample_to_file(path, prompt, seed, sampler, steps, metadata)
        finally:
            self.reference = reference
