"""The one interface every parameter generator implements: fit, sample, save, load.

A generator owns a fitted ``Tokenizer`` (what it generates and how values are scaled),
a reference checkpoint (everything it does not generate: BatchNorm buffers, frozen
layers) and the zoo's net recipe (so samples can be checked against, and loaded into,
the right architecture). Subclasses only say how tokens are modelled.
"""
from __future__ import annotations

import json
import logging
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

import weightgen
from weightgen.config import ConfigError, without_removed_keys
from weightgen.registry import did_you_mean
from weightgen.tensorfile import StreamingSafetensorsWriter
from weightgen.tokens import Tokenizer, TokenizerError
from weightgen.zoo import Zoo
from weightgen.zoo.train import resolve_device

log = logging.getLogger(__name__)

GENERATOR_JSON = "generator.json"
# The top-level keys of generator.json that every method writes (``save``); a method adds its ``extra_meta``.
SAVED_KEYS = ("method", "spec", "net_build", "layout", "weightgen_version")
WEIGHTS = "weights.safetensors"
REFERENCE = "reference.safetensors"


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class GeneratorError(ValueError):
    """A generator that cannot be built, loaded or used as asked.

    ``cli``: the same said with the command line's flags, where the message names Python
    arguments (``condition=...``); the command line prints it instead.
    """

    def __init__(self, message: str = "", cli: str | None = None):
        super().__init__(message)
        self.cli = cli


def warn_fixed_entries_vary(zoo: Zoo, members: list, reference: dict[str, torch.Tensor],
                            probes: int = 8) -> list[str]:
    """Warns, and returns their names, when floating-point entries of ``reference`` (a generator's
    fixed entries, taken from the first checkpoint ``members[0]``) differ between the zoo's training
    checkpoints: every sample takes them from ``reference``, and a network generated beside another
    checkpoint's BatchNorm statistics can lose most of its accuracy (docs/results.md, "Scale"). Probes
    ``probes`` checkpoints spread over the zoo, not all of them: statistics that move differ between any two."""
    fixed = [k for k, v in reference.items() if v.is_floating_point()]
    if not fixed or len(members) < 2:
        return []
    picks = sorted({round(i * (len(members) - 1) / (probes - 1)) for i in range(probes)} - {0})
    varying: dict[str, float] = {}
    for i in picks:
        other = zoo.load(members[i], fixed)
        for k in fixed:
            gap = float((other[k].double() - reference[k].double()).abs().max())
            if gap > 0:
                varying[k] = max(gap, varying.get(k, 0.0))
        if len(varying) == len(fixed):
            break
    if varying:
        worst = max(varying, key=varying.get)
        log.warning("%d tensor(s) the generator does not make differ between the zoo's checkpoints (e.g. '%s', up to "
                    "%.3g apart); every sample takes them from the first checkpoint, which can cost accuracy: "
                    "generate them too (tokenizer.buffers: true for BatchNorm statistics, or widen "
                    "tokenizer.include)", len(varying), worst, varying[worst])
    return sorted(varying)


def sample_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    """One CPU generator for each of the samples ``start:stop`` of a call to ``sample`` with
    ``seed``: sample i draws all its noise from a stream of its own, so its network does not
    depend on the batch it is made in."""
    base = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)))
    return [torch.Generator().manual_seed(base + i) for i in range(start, stop)]


class Generator(ABC):
    method: ClassVar[str]
    spec_class: ClassVar[type[BaseModel]]
    # True where ``sample_tokens`` takes one generator per sample (``sample_generators``): its
    # samples are then the same whatever the batch size, up to the float rounding of batched
    # matrix products. Otherwise a batch draws from one stream, and its samples depend on it.
    per_sample_noise: ClassVar[bool] = False

    def __init__(self, spec: BaseModel, tokenizer: Tokenizer, reference: dict[str, torch.Tensor], net_build: dict,
                 layout: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None, device: str = "auto"):
        """``reference``: a checkpoint of the net; only the entries the tokenizer does not
        generate are kept (a large network's generated tensors would double its memory).
        ``layout``: every entry's shape and dtype in state_dict order, when ``reference``
        holds only the fixed entries (a loaded generator). ``device``: where it fits and samples
        (``auto``: a GPU when torch sees one); the experiment's ``device``, not part of the spec."""
        self.spec = spec
        self.tokenizer = tokenizer
        self.net_build = net_build
        self.device = resolve_device(device)
        if layout is None:
            tokenizer.check(reference, "reference checkpoint")
            layout = {k: (tuple(v.shape), v.dtype) for k, v in reference.items()}
        self.layout = layout
        generated = set(tokenizer.names)
        self.reference = {k: v.cpu() for k, v in reference.items() if k not in generated}
        self.build_components()

    # -- what subclasses provide ----------------------------------------------------------
    @abstractmethod
    def build_components(self) -> None:
        """Create the networks from ``self.spec`` and the tokenizer's geometry."""

    @abstractmethod
    def components(self) -> dict[str, nn.Module]:
        """Every module whose weights make up the generator (saved and loaded by name)."""

    @abstractmethod
    def fit(self, zoo: Zoo, show_progress: bool = True) -> dict[str, Any]:
        """Train on the zoo's training checkpoints; returns training statistics."""

    @abstractmethod
    def sample_tokens(self, n: int, condition: Any, generator: torch.Generator, sampler: str = "ddpm",
                      steps: int | None = None) -> torch.Tensor:
        """``(n, num_tokens, width)`` normalized tokens on the CPU; ``generator`` is a list of one
        per sample where the class sets ``per_sample_noise``."""

    # -- shared machinery -----------------------------------------------------------------
    @classmethod
    def from_zoo(cls, spec: BaseModel, zoo: Zoo, tokenizer_spec, device: str = "auto", **kwargs) -> "Generator":
        """A generator for ``zoo``'s training checkpoints, built once at its real sizes; ``kwargs``:
        what a subclass's constructor takes from the zoo besides the tokenizer and reference."""
        members = zoo.members("train")
        if not members:
            raise GeneratorError(f"{zoo.root}: no finished training checkpoints to fit on")
        tokenizer = Tokenizer.from_spec(zoo, tokenizer_spec)
        gen = cls(spec, tokenizer, zoo.load(members[0]), zoo.meta("net_build"), device=device, **kwargs)
        warn_fixed_entries_vary(zoo, members, gen.reference)  # gen.reference: the entries not generated
        return gen

    def training_tokens(self, zoo: Zoo, split: str = "train") -> torch.Tensor:
        """``(M, num_tokens, width)`` tokens of the zoo's checkpoints, checked against the tokenizer."""
        self.check_zoo(zoo)
        return self.tokenizer.tokenize_batch(zoo.load(m, self.tokenizer.names) for m in zoo.members(split))

    def check_zoo(self, zoo: Zoo) -> None:
        """A zoo of another architecture is refused with the layer and both shapes."""
        members = zoo.members(None)
        if not members:
            raise GeneratorError(f"{zoo.root}: zoo has no finished checkpoints")
        # Shapes from the manifest, as meta tensors: nothing is read from disk.
        self.check_state({k: torch.empty(v[0], device="meta") for k, v in members[0].tensors.items()},
                         f"zoo {zoo.root}")

    def check_state(self, state: dict[str, torch.Tensor], what: str) -> None:
        """Every entry of a full state_dict must be there with the generator's shape, generated
        or not: samples are only useful if they load into the net."""
        try:
            self.tokenizer.check(state, what)
        except TokenizerError as e:
            raise GeneratorError(f"generator does not match the {what}: {e}") from None
        for name, (shape, _) in self.layout.items():
            if name not in state:
                raise GeneratorError(f"generator does not match the {what}: it has no layer '{name}'")
            if tuple(state[name].shape) != shape:
                raise GeneratorError(f"generator does not match the {what}: layer '{name}': the generator has "
                                     f"shape {shape}, the {what} has {tuple(state[name].shape)}")
        extra = [k for k in state if k not in self.layout]
        if extra:
            raise GeneratorError(f"generator does not match the {what}: it has layer '{extra[0]}' "
                                 "that the generator's net lacks")

    def build_net(self) -> nn.Module:
        from weightgen.nets import build_net

        b = self.net_build
        return build_net(b["name"], b["input_shape"], b["num_classes"], **b["kwargs"])

    def to_states(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full stacked state_dicts ``name -> (n, *shape)``: generated tensors from the tokens,
        the rest from the reference checkpoint (shared, not copied, across the batch)."""
        generated = self.tokenizer.tensors(tokens)
        n = tokens.shape[0]
        return {k: generated[k] if k in generated else self.reference[k].unsqueeze(0).expand(n, *self.reference[k].shape)
                for k in self.layout}

    @torch.no_grad()
    def sample(self, n: int, condition: Any = None, seed: int = 0, batch_size: int = 100, sampler: str = "ddpm",
               steps: int | None = None, first: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Yield stacked state_dicts in batches of at most ``batch_size`` (bounded memory).

        The same seed gives the same weights on the same machine; with ``per_sample_noise``, at
        any ``batch_size`` (up to float rounding). ``first``: the index of the first sample, so
        that several processes can each make their block (``write_samples``'s ``shard``); with
        ``per_sample_noise`` the block is the same as in one call, otherwise it draws from a
        stream of its own.
        """
        for m in self.components().values():
            m.eval()
        batch_size = self.memory_capped_batch(batch_size)
        gen = torch.Generator().manual_seed(seed) if first == 0 else sample_generators(seed, first, first + 1)[0]
        for start in range(first, first + n, batch_size):
            stop = min(start + batch_size, first + n)
            noise = sample_generators(seed, start, stop) if self.per_sample_noise else gen
            tokens = self.sample_tokens(stop - start, self.condition_rows(condition, start, stop), noise, sampler, steps)
            yield self.to_states(tokens)

    def condition_rows(self, condition: Any, start: int, stop: int) -> Any:
        """The part of ``condition`` for samples ``start:stop`` of a call to ``sample``: the
        whole condition, unless a generator takes one condition per sample (G.pt's targets)."""
        return condition

    def stream_tokens(self, condition: Any, generator: torch.Generator, sampler: str = "ddpm",
                      steps: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """One network's tokens as ``(first token index, (c, width) tokens)`` pieces, in order.

        Generators that can make a network a piece at a time override this, so that a
        network never has to be in memory whole; the default makes it at once.
        """
        yield 0, self.sample_tokens(1, condition, generator, sampler, steps)[0]

    @torch.no_grad()
    def sample_to_file(self, path: str | Path, condition: Any = None, seed: int = 0, sampler: str = "ddpm",
                       steps: int | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """Generate one network straight into a safetensors file (loadable with ``load_state_dict``).

        Tokens are written as they are made; memory does not grow with the network. The
        same seed gives the same network as ``sample(1, seed=seed)``. An interrupted call
        leaves only a ``.partial`` file, never one that looks complete. Returns how many
        values were not finite.
        """
        for m in self.components().values():
            m.eval()
        gen = sample_generators(seed, 0, 1) if self.per_sample_noise else torch.Generator().manual_seed(seed)
        meta = {"weightgen_version": weightgen.__version__, "method": self.method, "seed": str(seed),
                **(metadata or {})}
        nonfinite = 0
        with StreamingSafetensorsWriter(path, self.layout, meta) as out:
            for name, tensor in self.reference.items():
                out.write_tensor(name, tensor)
            for first, tokens in self.stream_tokens(condition, gen, sampler, steps):
                for name, start, values in self.tokenizer.pieces(first, tokens):
                    nonfinite += int((~torch.isfinite(values)).sum()) if values.is_floating_point() else 0
                    out.write(name, start, values)
        return {"path": str(path), "nonfinite": nonfinite, "params": self.tokenizer.num_params}

    def sampling_module(self, module: nn.Module) -> nn.Module:
        """The module to sample with: its EMA copy when the generator keeps one, in eval mode."""
        ema = getattr(self, "ema", None)
        return (ema.module if ema is not None else module).eval()

    @property
    def condition_kind(self) -> str:
        """What sampling asks for: ``none`` (unconditional), ``task_code``, ``metric`` (the spec's
        ``condition``) or ``prompt`` (a start checkpoint and metrics, G.pt's ``needs_prompt``)."""
        if getattr(self, "needs_prompt", None):
            return "prompt"
        return getattr(self.spec, "condition", "none")

    def resolve_condition(self, condition: Any) -> Any:
        """The condition in the form the generator samples with; a bad one is refused, never
        ignored. Unconditional generators accept only ``None``."""
        if condition is not None:
            raise GeneratorError(f"{self.method} is unconditional; sample it with condition=None",
                                 cli=f"{self.method} is unconditional: sample it without --classes, --task-code, "
                                     "--metric or --start")
        return None

    def memory_capped_batch(self, batch_size: int, budget_fraction: float = 0.25) -> int:
        """``batch_size``, lowered so a batch of samples fits in a quarter of the free memory.

        A batch holds the tokens, their diffusion state and the decoded state_dicts; a
        request for more than fits is streamed in smaller batches instead of failing.
        """
        per_sample = 4 * (4 * self.tokenizer.num_tokens * self.tokenizer.width
                          + sum(math.prod(shape) for shape, _ in self.layout.values()))
        fits = max(1, int(available_memory() * budget_fraction) // max(per_sample, 1))
        if fits < batch_size:
            log.warning("sampling %d networks at a time, not %d: a batch of %d would not fit in memory",
                        fits, batch_size, batch_size)
            return fits
        return batch_size

    def start_from(self, other: "Generator", source: str) -> None:
        """Take every weight (and EMA) of ``other``, a generator fitted earlier (read from
        ``source``), as the start of this fit (``init_from``); refused, naming what differs,
        unless both model the same tensors with the same modules."""
        if other.method != self.method:
            raise GeneratorError(f"init_from {source}: a {other.method} generator, this fit is {self.method}")
        if other.layout != self.layout or other.tokenizer.names != self.tokenizer.names:
            diff = next((k for k in dict.fromkeys([*self.layout, *other.layout])
                         if self.layout.get(k) != other.layout.get(k)), None)
            show = lambda k, lay: "absent" if k not in lay else f"{lay[k][0]} {lay[k][1]}"  # noqa: E731
            what = (f"entry '{diff}' is {show(diff, other.layout)} there, {show(diff, self.layout)} here" if diff
                    else f"it generates {len(other.tokenizer.names)} tensors, this tokenizer {len(self.tokenizer.names)}")
            raise GeneratorError(f"init_from {source}: fitted for another net or tokenizer ({what})")
        mine, theirs = self.components(), other.components()
        if set(mine) != set(theirs):
            raise GeneratorError(f"init_from {source}: has modules {', '.join(sorted(theirs))}, this fit needs "
                                 f"{', '.join(sorted(mine))} (an EMA on in one fit and off in the other?)")
        for name, module in mine.items():
            try:  # strict: torch names every missing, unexpected or differently shaped entry with both shapes
                module.load_state_dict(theirs[name].state_dict())
            except RuntimeError as e:
                raise GeneratorError(f"init_from {source}: weights of '{name}' do not fit this fit's spec ({e})") from None
        log.info("fit starts from the generator in %s", source)

    # -- persistence: JSON + safetensors, nothing pickled ---------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(d)
        save_file({k: v.contiguous() for k, v in self.reference.items()}, str(d / REFERENCE))
        weights = {f"{name}.{k}": v.detach().cpu().contiguous()
                   for name, m in self.components().items() for k, v in m.state_dict().items()}
        save_file(weights, str(d / WEIGHTS))
        meta = {"method": self.method, "spec": self.spec.model_dump(mode="json"), "net_build": self.net_build,
                "layout": [[k, list(shape), str(dtype).removeprefix("torch.")] for k, (shape, dtype) in self.layout.items()],
                "weightgen_version": weightgen.__version__, **self.extra_meta()}
        (d / GENERATOR_JSON).write_text(json.dumps(meta, indent=1))
        return d

    def extra_meta(self) -> dict:
        """Anything besides weights a subclass needs to rebuild itself (JSON-able)."""
        return {}

    def load_extra_meta(self, meta: dict) -> None:
        pass


def member_metric(member, name: str) -> float:
    """A zoo member's metric ``name`` (``<split>_<metric>``, any metric its task records); where the
    checkpoint records accuracy but no error, ``<split>_error`` is 1 - ``<split>_accuracy``."""
    if name in member.metrics:
        return float(member.metrics[name])
    accuracy = name.removesuffix("_error") + "_accuracy"
    if name.endswith("_error") and accuracy in member.metrics:
        return 1.0 - float(member.metrics[accuracy])
    raise GeneratorError(f"checkpoint {member.id} (run {member.run}, step {member.step}) has no metric "
                         f"'{name}'; it has: {', '.join(metric_names(member.metrics)) or 'none'}")


def metric_names(metrics: dict) -> list[str]:
    """The metric names a checkpoint answers to: those it records, and ``<split>_error`` beside each accuracy."""
    derived = [k.removesuffix("_accuracy") + "_error" for k in metrics if k.endswith("_accuracy")]
    return list(metrics) + [k for k in derived if k not in metrics]


def set_sampling(spec, temperature: float | None = None) -> None:
    """Set a generator spec's sampling settings (None: leave as is). They change no fitted weight,
    so one fit serves every value."""
    if temperature is not None:
        spec.diffusion.temperature = temperature


def load_generator(directory: str | Path, device: str = "auto") -> Generator:
    """Rebuild a saved generator of any registered method, on ``device`` (``auto``: a GPU if any)."""
    from .registry import GENERATORS

    d = Path(directory)
    try:
        meta = json.loads((d / GENERATOR_JSON).read_text())
    except FileNotFoundError:
        raise GeneratorError(f"{d / GENERATOR_JSON}: missing; is {d} a saved generator?") from None
    except json.JSONDecodeError as e:
        raise GeneratorError(f"{d / GENERATOR_JSON}: not valid JSON ({e})") from None
    method = meta.get("method", "?")
    if method not in GENERATORS:
        raise GeneratorError(f"{d / GENERATOR_JSON}: unknown method {method!r}; known: {', '.join(GENERATORS.names())}")
    cls = GENERATORS.get(method)
    try:
        saved = without_removed_keys(cls.spec_class, meta["spec"], f"{d / GENERATOR_JSON}: spec")
        spec = cls.spec_class.model_validate(saved)
    except ConfigError as e:
        raise GeneratorError(str(e)) from None
    except (ValidationError, KeyError, AttributeError) as e:
        raise GeneratorError(f"{d / GENERATOR_JSON}: bad spec: {e}") from None
    try:
        tokenizer = Tokenizer.load(d)
    except TokenizerError as e:
        raise GeneratorError(str(e)) from None
    reference, weights = (_load_tensors(d / name) for name in (REFERENCE, WEIGHTS))
    try:
        layout = {k: (tuple(shape), getattr(torch, dtype)) for k, shape, dtype in meta["layout"]}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise GeneratorError(f"{d / GENERATOR_JSON}: bad or missing 'layout' ({e!r})") from None
    try:
        tokenizer.check({k: torch.empty(shape, device="meta") for k, (shape, _) in layout.items()}, "generator layout")
    except TokenizerError as e:
        raise GeneratorError(f"{d / GENERATOR_JSON}: {e}") from None
    fixed = [k for k in layout if k not in set(tokenizer.names)]
    missing = [k for k in fixed if k not in reference]
    if missing:
        raise GeneratorError(f"{d / REFERENCE}: has no tensor '{missing[0]}' that the net needs")
    for k in fixed:
        if tuple(reference[k].shape) != layout[k][0]:
            raise GeneratorError(f"{d / REFERENCE}: tensor '{k}' has shape {tuple(reference[k].shape)}, "
                                 f"{GENERATOR_JSON} says {layout[k][0]}")
    # safetensors sorts keys; the layout keeps the net's state_dict order.
    gen = cls.__new__(cls)
    gen.load_extra_meta(meta)
    Generator.__init__(gen, spec, tokenizer, {k: reference[k] for k in fixed}, meta["net_build"], layout, device)
    allowed = [*SAVED_KEYS, *gen.extra_meta()]  # what `save` writes for this method
    unknown = [k for k in meta if k not in allowed]
    if unknown:
        raise GeneratorError(f"{d / GENERATOR_JSON}: unknown key '{unknown[0]}'{did_you_mean(str(unknown[0]), allowed)}; "
                             f"allowed keys: {', '.join(allowed)}")
    for name, module in gen.components().items():
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise GeneratorError(f"{d / WEIGHTS}: weights of '{name}' do not fit the spec ({e})") from None
        module.to(gen.device)
    return gen


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise GeneratorError(f"{path}: missing generator file")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise GeneratorError(f"{path}: unreadable generator file ({e})") from None
