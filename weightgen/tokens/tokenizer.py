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

For a compressed zoo (``zoo.compress``, ``weightgen.compress``) ``mask: shared`` makes the tokens hold
only the entries that the one mask of every training checkpoint keeps, so their number (and a
generator's work) scales with the density; the entries left out come back as zeros. Whatever the
mask mode, the tensors made from tokens are put in the zoo's compressed space (``weightgen.compress.project``:
the mask or the zoo's density imposed, quantized values snapped to their grid).
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
MASK_MODES = ("none", "shared", "generated")


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
    kept: int | None = None  # values in the tokens when a shared mask keeps only some (``mask: shared``)

    @property
    def numel(self) -> int:
        """Values of the tensor in the tokens: all of them, or the ones a shared mask keeps."""
        return math.prod(self.shape) if self.kept is None else self.kept


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


def zoo_compression(zoo, members, names: list[str], mask: str) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """A zoo's ``compress`` record and, for ``mask: shared``, the flat indices its one mask keeps in
    each selected pruned tensor; a zoo whose training checkpoints disagree on the mask is refused."""
    if mask not in MASK_MODES:
        raise TokenizerError(f"mask must be one of {', '.join(MASK_MODES)}, got {mask!r}")
    record = zoo.meta("compress")
    if mask != "none" and not (record and record.get("pruned")):
        raise TokenizerError(f"tokenizer.mask '{mask}' needs a pruned zoo (zoo.compress.prune); {zoo.root} is not "
                             "pruned: use tokenizer.mask: none")
    if mask != "shared":
        return record, {}
    from weightgen.compress.zoo import zoo_masks

    pruned = [n for n in names if n in record["pruned"]]
    first = None
    for m in members:
        masks = zoo_masks(zoo, m)
        if first is None:
            first, first_member = masks, m
            continue
        for n in pruned:
            if not torch.equal(first[n], masks[n]):
                differ = int((first[n] != masks[n]).sum())
                raise TokenizerError(
                    f"tokenizer.mask 'shared' needs one mask for every training checkpoint, but "
                    f"{first_member.shard} and {m.shard} differ in {differ} entries of '{n}'; use tokenizer.mask: generated, or "
                    "zoo.compress.prune.mask: shared")
    return record, {n: first[n].reshape(-1).nonzero().flatten() for n in pruned}


class Tokenizer:
    """The token grid of one zoo's selected tensors and their normalization; see the module doc."""

    def __init__(self, segments: list[Segment], token_size: int | str, mean: torch.Tensor, std: torch.Tensor,
                 normalize: str = "tensor", kept: dict[str, torch.Tensor] | None = None,
                 compressed: dict | None = None, mask: str = "none"):
        """``kept``: flat indices of the entries a shared mask keeps, by tensor (``mask: shared``);
        ``compressed``: the zoo's ``compress`` record, whose space made tensors are put in."""
        self.segments = segments
        self.token_size = token_size
        self.normalize = normalize
        self.kept = kept or {}
        self.compressed = compressed
        self.mask_mode = mask
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
    def layout(cls, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], token_size: int | str,
               kept: dict[str, int] | None = None) -> list[Segment]:
        """Where each tensor's tokens sit, in ``shapes`` order; a token never spans two tensors.
        ``kept``: the values of a tensor in the tokens where a shared mask keeps only some."""
        kept = kept or {}
        if token_size != FLAT:
            if not isinstance(token_size, int) or token_size < 1:
                raise TokenizerError(f"token_size must be a positive integer or '{FLAT}', got {token_size!r}")
            largest = max(kept.get(n, math.prod(s)) for n, s in shapes.items())
            if token_size > largest:
                raise TokenizerError(
                    f"token_size {token_size} is larger than every selected layer (the largest has {largest} values); "
                    f"use at most {largest}, or '{FLAT}' for one token per network"
                )
        segments, first = [], 0
        for name, shape in shapes.items():
            n = kept.get(name, math.prod(shape))
            count = 1 if token_size == FLAT else -(-n // token_size)
            if name in kept:  # a tensor its mask empties still has a (padding) token, so a stream writes its zeros
                count = max(count, 1)
            segments.append(Segment(name, tuple(shape), dtypes[name], first, count, kept.get(name)))
            first += count
        return segments

    @classmethod
    def fit(cls, states: Iterable[dict[str, torch.Tensor]], include: list[str] | None = None,
            exclude: list[str] | None = None, token_size: int | str = 64,
            parameter_names: list[str] | None = None, normalize: str | bool = "tensor",
            kept: dict[str, torch.Tensor] | None = None, compressed: dict | None = None,
            mask: str = "none") -> "Tokenizer":
        """Fit normalization stats over ``states`` (streamed: one state in memory at a time).

        ``normalize``: ``"tensor"`` (RPG: one mean/std per tensor over all its values and
        checkpoints), ``"element"`` (one mean/std per parameter over the checkpoints: tokens
        then hold each value's deviation from the zoo's mean checkpoint; a value the zoo never
        changes takes its tensor's typical spread, ``constant_element_scale``), or ``"none"``
        (raw values, as p-diff's flat vectors). ``True``/``False`` mean tensor/none. ``kept``,
        ``compressed``, ``mask``: a compressed zoo's (``__init__``); stats are over the kept entries.
        """
        kept = kept or {}
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
                sizes = [len(kept[n]) if n in kept else math.prod(shapes[n]) for n in names]
                sums = [torch.zeros(size, dtype=torch.float64) for size in sizes]
                sq = [torch.zeros_like(v) for v in sums]
            for i, n in enumerate(names):
                t = state[n].double()
                if tuple(t.shape) != shapes[n]:
                    raise TokenizerError(f"layer '{n}': checkpoints disagree in shape: {shapes[n]} vs {tuple(t.shape)}")
                t = t.flatten()[kept[n]] if n in kept else t.flatten()
                sums[i] += t
                sq[i] += t ** 2
            count += 1
        if names is None:
            raise TokenizerError("cannot fit a tokenizer on zero checkpoints")
        if mode == "element":
            mean = torch.cat(sums) / count
            var = torch.cat(sq) / count - mean**2
        else:
            numel = torch.tensor(sizes, dtype=torch.float64) * count
            mean = torch.stack([v.sum() for v in sums]) / numel
            var = torch.stack([v.sum() for v in sq]) / numel - mean**2
        std = var.clamp_min(0).sqrt()
        if mode == "element":
            std = constant_element_scale(std, sizes)
        # A tensor that is constant across the zoo keeps scale 1.
        std = torch.where(std > CONSTANT, std, torch.ones_like(std))
        if mode == "none":
            mean, std = torch.zeros(len(names), dtype=torch.float64), torch.ones(len(names), dtype=torch.float64)
        kept = {n: kept[n] for n in names if n in kept}
        return cls(cls.layout(shapes, dtypes, token_size, {n: len(v) for n, v in kept.items()}), token_size, mean,
                   std, mode, kept, compressed, mask)

    @classmethod
    def fit_zoo(cls, zoo, include=None, exclude=None, token_size: int | str = 64, buffers: bool = False,
                normalize: str | bool = "tensor", split: str = "train", mask: str = "none") -> "Tokenizer":
        """``fit`` on a zoo's ``split`` checkpoints, read one at a time; buffers only with ``buffers``.
        ``mask``: for a compressed zoo, ``none``, ``shared`` or ``generated`` (``TokenizerSpec.mask``)."""
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
        compressed, kept = zoo_compression(zoo, members, names, mask)
        return cls.fit((zoo.load(m, names) for m in members), names, [], token_size, normalize=normalize,
                       kept=kept, compressed=compressed, mask=mask)

    @classmethod
    def from_spec(cls, zoo, spec) -> "Tokenizer":
        """Fit on a zoo's training members as a config's ``tokenizer`` section says."""
        return cls.fit_zoo(zoo, spec.include, spec.exclude, spec.token_size, spec.buffers, spec.normalize,
                           mask=getattr(spec, "mask", "none"))

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
            v = state[s.name].detach().double().flatten()
            if s.name in self.kept:
                v = v[self.kept[s.name].to(v.device)]
            v = ((v - mean) / std).float()
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
            if s.name in self.kept:  # the entries the shared mask removes are zeros
                full = torch.zeros(*lead, math.prod(s.shape), dtype=v.dtype, device=v.device)
                full[..., self.kept[s.name].to(v.device)] = v
                v = full
            out[s.name] = constrain(s.name, v.to(getattr(torch, s.dtype)).reshape(*lead, *s.shape))
            offset += span
        return self.project(out, len(lead))

    def project(self, tensors: dict[str, torch.Tensor], lead: int = 1) -> dict[str, torch.Tensor]:
        """``tensors`` (``lead`` batch dims) in the compressed zoo's space (module doc); as they are otherwise."""
        if not self.compressed:
            return tensors
        from weightgen.compress.project import project

        return project(tensors, self.compressed, self.mask_mode, lead, self.kept)

    def pieces(self, first: int, tokens: torch.Tensor) -> Iterable[tuple[str, int, torch.Tensor]]:
        """Denormalized values of the consecutive tokens ``first, first + 1, ...`` (``(c, width)``)
        as ``(tensor name, first flat index, 1D values)`` pieces, padding dropped: what a
        streaming writer needs to place tokens in a file without building whole tensors."""
        last = first + len(tokens)
        if self.compressed and (self.compressed.get("bits") or self.mask_mode == "generated"):
            raise TokenizerError("a quantized zoo's or a generated mask's values are set per channel or tensor, not "
                                 "per token: sample such a network whole (Generator.sample), not streamed")
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
            values = constrain(s.name, (values * std + mean).to(getattr(torch, s.dtype)))
            if s.name not in self.kept:
                yield s.name, start, values
                continue
            # a shared mask: each run of consecutive kept entries is one piece, the zeros between them too
            idx = self.kept[s.name][start:stop]
            if not len(idx):
                yield s.name, 0, torch.zeros(math.prod(s.shape), dtype=values.dtype)
                continue
            ends = ((idx[1:] - idx[:-1]) != 1).nonzero().flatten().tolist() + [len(idx) - 1]
            a = 0
            prev = int(self.kept[s.name][start - 1]) + 1 if start > 0 else 0
            for b in ends:
                if int(idx[a]) > prev:
                    yield s.name, prev, torch.zeros(int(idx[a]) - prev, dtype=values.dtype)
                yield s.name, int(idx[a]), values[a: b + 1]
                prev, a = int(idx[b]) + 1, b + 1
            if stop == s.numel and prev < math.prod(s.shape):
                yield s.name, prev, torch.zeros(math.prod(s.shape) - prev, dtype=values.dtype)

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
        if self.compressed:
            meta.update(mask=self.mask_mode, compressed=self.compressed)
        (d / "tokenizer.json").write_text(json.dumps(meta, indent=1))
        save_file({"mean": self.mean, "std": self.std, **{f"kept.{k}": v.contiguous() for k, v in self.kept.items()}},
                  str(d / "tokenizer.safetensors"))

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
        kept = {k.removeprefix("kept."): v for k, v in stats.items() if k.startswith("kept.")}
        sizes = {n: len(kept[n]) if n in kept else math.prod(s) for n, s in shapes.items()}
        normalize = meta.get("normalize", "tensor")
        expected = sum(sizes.values()) if normalize == "element" else len(shapes)
        if len(mean) != expected or len(std) != expected:
            raise TokenizerError(f"{stats_file}: has {len(mean)} stats, {meta_file} needs {expected} ({normalize} mode)")
        return cls(cls.layout(shapes, dtypes, token_size, {n: len(v) for n, v in kept.items()}), token_size, mean, std,
                   normalize, kept, meta.get("compressed"), meta.get("mask", "none"))

    def __repr__(self) -> str:
        return (f"Tokenizer({len(self.segments)} tensors, {self.num_params} values, "
                f"{self.num_tokens} tokens x {self.width})")
