"""Parameters <-> tokens: one tokenizer for every generator.

As RPG does it: choose the tensors to generate with glob patterns, normalize each
tensor with a mean and std fitted on the zoo, and cut each tensor into tokens of a
fixed size that never span two tensors; the last token of a tensor is zero-padded and
the padding is masked. Each token knows its 2D position (tensor index, index within
the tensor). p-diff's flat vector is the same tokenizer with ``token_size="flat"``:
one token holding every selected value, no padding.

The inverse rebuilds a complete state_dict: generated tensors come from the tokens,
everything else (BatchNorm buffers, frozen layers) from a reference checkpoint. Tokens are
float32, so a normalized value is rounded once: a value x comes back within 2^-23 * |x - mean|
(about 1.2e-7 of its distance from its mean, ``ROUND_TRIP_BOUND``), and exactly with
``normalize: none`` and for every entry not generated. Exact tokens would need float64 ones,
twice the memory of every generator's data.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

from weightgen.nets.constraints import constrain
from weightgen.nets.fold_bn import FOLD_META, folded_entries

FLAT = "flat"
NORMALIZE_MODES = ("tensor", "element", "none")


class TokenizerError(ValueError):
    """A selection, layout or state_dict that the tokenizer cannot work with."""


@dataclass(frozen=True)
class Segment:
    """Where one tensor lives in the token grid: tokens [first, first + count)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    first: int
    count: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def select_names(state: dict[str, torch.Tensor], include: list[str], exclude: list[str],
                 parameter_names: list[str] | None = None) -> list[str]:
    """Floating-point entries matching ``include`` and not ``exclude``, in state_dict order.

    With ``parameter_names`` given, buffers (BatchNorm running stats) are left out.
    """
    names = []
    for name, t in state.items():
        if not t.is_floating_point():
            continue
        if parameter_names is not None and name not in parameter_names:
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in include) and not any(fnmatch.fnmatchcase(name, p) for p in exclude):
            names.append(name)
    if not names:
        sample = ", ".join(list(state)[:8])
        raise TokenizerError(f"include {include} / exclude {exclude} select no tensor; names look like: {sample}, ...")
    return names


CONSTANT = 1e-8  # a spread at or below this is a value the zoo never changes
# A round trip (tokenize, then tensors) returns x within ROUND_TRIP_BOUND * |x - mean|: the
# float32 rounding of the normalized value, at most 2^-24 of it, carried back and rounded once more.
ROUND_TRIP_BOUND = 2.0**-23


def constant_element_scale(std: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per-value spreads ``std`` (flat, tensor after tensor of ``sizes``) with the values the zoo
    never changes given the median spread of their tensor's changing values (of the network's,
    when none of the tensor's change; left as they are when nothing changes).

    Such a value's tokens are always 0, so its scale only decides what the generator's error
    there costs. A scale of 1 makes that error the size of a weight, and a zoo can hold many such
    values: a ResNet-18 on 32x32 inputs sees 1x1 feature maps in layer4, so 8 of its 3x3 kernels'
    9 taps get no gradient. Samples then land far from every checkpoint (docs/results.md, 'Scale').
    At its neighbours' scale the error costs what it does there.
    """
    varying = std > CONSTANT
    if varying.all() or not varying.any():
        return std
    overall = std[varying].median()
    parts = []
    for part, moves in zip(std.split(sizes), varying.split(sizes)):
        fill = part[moves].median() if moves.any() else overall
        parts.append(torch.where(moves, part, fill))
    return torch.cat(parts)


class Tokenizer:
    """The token grid of one zoo's selected tensors and their normalization; see the module doc."""

    def __init__(self, segments: list[Segment], token_size: int | str, mean: torch.Tensor, std: torch.Tensor,
                 normalize: str = "tensor"):
        self.segments = segments
        self.token_size = token_size
        self.normalize = normalize
        # One scalar per tensor ("tensor", "none"), or one value per parameter ("element").
        self.mean = mean.double()
        self.std = std.double()
        self.flat = token_size == FLAT
        self.width = sum(s.numel for s in segments) if self.flat else int(token_size)
        self.num_tokens = 1 if self.flat else sum(s.count for s in segments)
        self._offsets = [0]
        for seg in segments:
            self._offsets.append(self._offsets[-1] + seg.numel)

    def stats(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of segment ``i``: scalars, or flat per-element vectors."""
        if self.normalize == "element":
            a, b = self._offsets[i], self._offsets[i + 1]
            return self.mean[a:b], self.std[a:b]
        return self.mean[i], self.std[i]

    # -- construction -----------------------------------------------------------------
    @classmethod
    def layout(cls, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], token_size: int | str) -> list[Segment]:
        """Where each tensor's tokens sit, in ``shapes`` order; a token never spans two tensors."""
        if token_size != FLAT:
            if not isinstance(token_size, int) or token_size < 1:
                raise TokenizerError(f"token_size must be a positive integer or '{FLAT}', got {token_size!r}")
            largest = max(math.prod(s) for s in shapes.values())
            if token_size > largest:
                raise TokenizerError(
                    f"token_size {token_size} is larger than every selected layer (the largest has {largest} values); "
                    f"use at most {largest}, or '{FLAT}' for one token per network"
                )
        segments, first = [], 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            count = 1 if token_size == FLAT else -(-n // token_size)
            segments.append(Segment(name, tuple(shape), dtypes[name], first, count))
            first += count
        return segments

    @classmethod
    def fit(cls, states: Iterable[dict[str, torch.Tensor]], include: list[str] | None = None,
            exclude: list[str] | None = None, token_size: int | str = 64,
            parameter_names: list[str] | None = None, normalize: str | bool = "tensor") -> "Tokenizer":
        """Fit normalization stats over ``states`` (streamed: one state in memory at a time).

        ``normalize``: ``"tensor"`` (RPG: one mean/std per tensor over all its values and
        checkpoints), ``"element"`` (one mean/std per parameter over the checkpoints: tokens
        then hold each value's deviation from the zoo's mean checkpoint; a value the zoo never
        changes takes its tensor's typical spread, ``constant_element_scale``), or ``"none"``
        (raw values, as p-diff's flat vectors). ``True``/``False`` mean tensor/none.
        """
        mode = {True: "tensor", False: "none"}.get(normalize, normalize) if isinstance(normalize, bool) else normalize
        if mode not in NORMALIZE_MODES:
            raise TokenizerError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
        include, exclude = include or ["*"], exclude or []
        names, sums, sq, count = None, None, None, 0
        shapes, dtypes = {}, {}
        for state in states:
            if names is None:
                names = select_names(state, include, exclude, parameter_names)
                shapes = {n: tuple(state[n].shape) for n in names}
                dtypes = {n: str(state[n].dtype).removeprefix("torch.") for n in names}
                sums = [torch.zeros(math.prod(shapes[n]), dtype=torch.float64) for n in names]
                sq = [torch.zeros_like(v) for v in sums]
            for i, n in enumerate(names):
                t = state[n].double()
                if tuple(t.shape) != shapes[n]:
                    raise TokenizerError(f"layer '{n}': checkpoints disagree in shape: {shapes[n]} vs {tuple(t.shape)}")
                sums[i] += t.flatten()
                sq[i] += t.flatten() ** 2
            count += 1
        if names is None:
            raise TokenizerError("cannot fit a tokenizer on zero checkpoints")
        if mode == "element":
            mean = torch.cat(sums) / count
            var = torch.cat(sq) / count - mean**2
        else:
            numel = torch.tensor([math.prod(shapes[n]) for n in names], dtype=torch.float64) * count
            mean = torch.stack([v.sum() for v in sums]) / numel
            var = torch.stack([v.sum() for v in sq]) / numel - mean**2
        std = var.clamp_min(0).sqrt()
        if mode == "element":
            std = constant_element_scale(std, [math.prod(shapes[n]) for n in names])
        # A tensor that is constant across the zoo keeps scale 1.
        std = torch.where(std > CONSTANT, std, torch.ones_like(std))
        if mode == "none":
            mean, std = torch.zeros(len(names), dtype=torch.float64), torch.ones(len(names), dtype=torch.float64)
        return cls(cls.layout(shapes, dtypes, token_size), token_size, mean, std, mode)

    @classmethod
    def fit_zoo(cls, zoo, include=None, exclude=None, token_size: int | str = 64, buffers: bool = False,
                normalize: str | bool = "tensor", split: str = "train") -> "Tokenizer":
        """``fit`` on a zoo's ``split`` checkpoints, read one at a time; buffers only with ``buffers``."""
        members = zoo.members(split)
        if not members:
            raise TokenizerError(f"{zoo.root}: no finished '{split}' checkpoints to fit a tokenizer on")
        params = None if buffers else zoo.parameter_names
        first = zoo.load(members[0])
        names = select_names(first, include or ["*"], exclude or [], params)
        # a folded zoo's BatchNorm entries are one constant in every checkpoint: taken from the
        # reference checkpoint, never generated (where an error would only cost)
        folded = set(folded_entries(zoo.meta(FOLD_META)))
        if folded and not [n for n in names if n not in folded]:
            raise TokenizerError(f"include {include} / exclude {exclude} select only BatchNorm entries that zoo.fold_bn "
                                 "made the same constant in every checkpoint; nothing is left to generate")
        names = [n for n in names if n not in folded]
        return cls.fit((zoo.load(m, names) for m in members), names, [], token_size, normalize=normalize)

    @classmethod
    def from_spec(cls, zoo, spec) -> "Tokenizer":
        """Fit on a zoo's training members as a config's ``tokenizer`` section says."""
        return cls.fit_zoo(zoo, spec.include, spec.exclude, spec.token_size, spec.buffers, spec.normalize)

    # -- geometry ---------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    @property
    def num_params(self) -> int:
        return sum(s.numel for s in self.segments)

    @property
    def positions(self) -> torch.Tensor:
        """``(num_tokens, 2)``: (tensor index, token index within the tensor)."""
        if self.flat:
            return torch.zeros(1, 2, dtype=torch.long)
        return torch.cat([torch.stack([torch.full((s.count,), i), torch.arange(s.count)], 1)
                          for i, s in enumerate(self.segments)])

    @property
    def mask(self) -> torch.Tensor:
        """``(num_tokens, width)`` bool: True where a value is real, False on padding."""
        if self.flat:
            return torch.ones(1, self.width, dtype=torch.bool)
        rows = []
        for s in self.segments:
            m = torch.zeros(s.count * self.width, dtype=torch.bool)
            m[: s.numel] = True
            rows.append(m.view(s.count, self.width))
        return torch.cat(rows)

    @property
    def valid_counts(self) -> torch.Tensor:
        """``(num_tokens,)`` real values per token (the rest is padding), without a per-value mask."""
        if self.flat:
            return torch.tensor([self.width])
        return torch.cat([torch.clamp(s.numel - torch.arange(s.count) * self.width, max=self.width)
                          for s in self.segments])

    # -- checks -----------------------------------------------------------------------
    def check(self, state: dict[str, torch.Tensor], what: str = "state_dict") -> None:
        """Raise naming the first layer that is missing or has another shape."""
        for s in self.segments:
            if s.name not in state:
                raise TokenizerError(f"{what} has no layer '{s.name}' that the tokenizer generates")
            if tuple(state[s.name].shape) != s.shape:
                raise TokenizerError(
                    f"layer '{s.name}': the tokenizer/generator has shape {s.shape}, the {what} has {tuple(state[s.name].shape)}"
                )

    # -- forward and inverse ----------------------------------------------------------
    def tokenize(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(num_tokens, width)`` float32 tokens of one state_dict."""
        self.check(state)
        pieces = []
        for i, s in enumerate(self.segments):
            mean, std = self.stats(i)
            v = ((state[s.name].detach().double().flatten() - mean) / std).float()
            if not self.flat:
                v = torch.nn.functional.pad(v, (0, s.count * self.width - s.numel))
            pieces.append(v)
        return torch.cat(pieces).view(self.num_tokens, self.width)

    def tokenize_batch(self, states: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
        return torch.stack([self.tokenize(s) for s in states])

    def tensors(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Generated tensors from tokens ``(..., num_tokens, width)``; leading dims are kept. The
        inverse of ``tokenize`` within ``ROUND_TRIP_BOUND`` (module doc), exact without normalization."""
        lead = tokens.shape[:-2]
        if tuple(tokens.shape[-2:]) != (self.num_tokens, self.width):
            raise TokenizerError(f"tokens have shape {tuple(tokens.shape[-2:])}, expected ({self.num_tokens}, {self.width})")
        flat = tokens.reshape(*lead, -1)
        out, offset = {}, 0
        for i, s in enumerate(self.segments):
            span = s.numel if self.flat else s.count * self.width
            mean, std = self.stats(i)
            v = flat[..., offset: offset + s.numel].double() * std + mean
            out[s.name] = constrain(s.name, v.to(getattr(torch, s.dtype)).reshape(*lead, *s.shape))
            offset += span
        return out

    def pieces(self, first: int, tokens: torch.Tensor) -> Iterable[tuple[str, int, torch.Tensor]]:
        """Denormalized values of the consecutive tokens ``first, first + 1, ...`` (``(c, width)``)
        as ``(tensor name, first flat index, 1D values)`` pieces, padding dropped: what a
        streaming writer needs to place tokens in a file without building whole tensors."""
        last = first + len(tokens)
        for i, s in enumerate(self.segments):
            if self.flat:  # the one token holds every tensor back to back
                start, stop = 0, s.numel
                values = tokens.reshape(-1)[self._offsets[i]: self._offsets[i + 1]].double()
            else:
                a, b = max(first, s.first), min(last, s.first + s.count)
                if a >= b:
                    continue
                start = (a - s.first) * self.width
                stop = min((b - s.first) * self.width, s.numel)
                values = tokens[a - first: b - first].reshape(-1)[: stop - start].double()
            mean, std = self.stats(i)
            if self.normalize == "element":
                mean, std = mean[start:stop], std[start:stop]
            yield s.name, start, constrain(s.name, (values * std + mean).to(getattr(torch, s.dtype)))

    def detokenize(self, tokens: torch.Tensor, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A complete state_dict: generated tensors from ``tokens``, the rest from ``reference``."""
        self.check(reference, "reference checkpoint")
        generated = self.tensors(tokens)
        return {k: generated.get(k, v) for k, v in reference.items()}

    # -- persistence (JSON + safetensors; nothing pickled) ------------------------------
    def save(self, directory: str | Path) -> None:
        """tokenizer.json (layout) and tokenizer.safetensors (mean and std) in ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"token_size": self.token_size, "normalize": self.normalize,
                "segments": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.segments]}
        (d / "tokenizer.json").write_text(json.dumps(meta, indent=1))
        save_file({"mean": self.mean, "std": self.std}, str(d / "tokenizer.safetensors"))

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        """What ``save`` wrote; a missing or unreadable file is named in the error."""
        d = Path(directory)
        meta_file, stats_file = d / "tokenizer.json", d / "tokenizer.safetensors"
        for f in (meta_file, stats_file):
            if not f.is_file():
                raise TokenizerError(f"{f}: missing tokenizer file")
        try:
            meta = json.loads(meta_file.read_text())
            token_size = meta["token_size"]
            shapes = {s["name"]: tuple(s["shape"]) for s in meta["segments"]}
            dtypes = {s["name"]: s["dtype"] for s in meta["segments"]}
        except (ValueError, KeyError, TypeError) as e:
            raise TokenizerError(f"{meta_file}: unreadable tokenizer file ({e!r})") from None
        try:
            stats = load_file(str(stats_file))
            mean, std = stats["mean"], stats["std"]
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise TokenizerError(f"{stats_file}: unreadable tokenizer file ({e!r})") from None
        normalize = meta.get("normalize", "tensor")
        expected = sum(math.prod(s) for s in shapes.values()) if normalize == "element" else len(shapes)
        if len(mean) != expected or len(std) != expected:
            raise TokenizerError(f"{stats_file}: has {len(mean)} stats, {meta_file} needs {expected} ({normalize} mode)")
        return cls(cls.layout(shapes, dtypes, token_size), token_size, mean, std, normalize)

    def __repr__(self) -> str:
        return (f"Tokenizer({len(self.segments)} tensors, {self.num_params} values, "
                f"{self.num_tokens} tokens x {self.width})")
