"""Experiment configs: YAML in, pydantic-validated models out, errors that say what to fix.

An unknown key is named together with the keys allowed at that place; a wrong type
or value names the field by its dotted path. Task and net options are checked against
the registered factory's signature at load time, not when a build is half done.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      ValidationInfo, model_validator)

from weightgen.plugins import canonical
from weightgen.registry import RegistryError, check_kwargs, did_you_mean


class ConfigError(ValueError):
    """A config that cannot be used, with every problem listed by dotted path."""


# Keys that earlier versions accepted, with the value that meant "off" (a saved generator holding it
# loads as before) and why each went; the evidence is in docs/results.md, "What did not work".
REMOVED_KEYS: dict[str, tuple[Any, str]] = {
    "preconditioning": ("residual", "G.pt's posterior preconditioning prompted worse than the published residual"),
    "scale_augmentation": (None, "G.pt's per-unit scale augmentation made the CNN's prompts worse"),
    "canonical_order": (False, "sorting G.pt's hidden units did not make the CNN fit"),
    "pair_sampling": ("uniform_gap", "G.pt draws pairs as its released code does (uniform gap)"),
    "max_gap": (None, "capping G.pt's pair gap was never shown to help"),
    "frequencies": (32, "G.pt's metric embedding uses fixed constants: 32 frequencies up to 2^8"),
    "max_freq_log2": (8.0, "G.pt's metric embedding uses fixed constants: 32 frequencies up to 2^8"),
    "condition_dropout": (0.0, "classifier-free guidance did not help RPG's task codes and hurt G.pt's prompts"),
    "guidance_scale": (1.0, "classifier-free guidance did not help RPG's task codes and hurt G.pt's prompts"),
    "teacher_noise": (0.0, "noising RPG's previous tokens did not stop whole networks drifting to chance"),
    "state_mix": (0.0, "mixing RPG's permutation states halved accuracy"),
    "position": ("2d", "RPG's 1d and learned positions made no difference; the released 2D sinusoid stays"),
    "mamba_scan": ("auto", "RPG picks its Mamba scan itself: parallel on a GPU, token by token elsewhere"),
    "latent_norm": ("none", "standardizing p-diff's latents did not help"),
    "noise_mode": ("mix", "p-diff mixes its noise as the paper does"),
    "beta_start": (1e-4, "the noise schedule is DDPM's linear 1e-4..2e-2, as in every published method"),
    "beta_end": (2e-2, "the noise schedule is DDPM's linear 1e-4..2e-2, as in every published method"),
    "beta_schedule": ("linear", "the noise schedule is DDPM's linear 1e-4..2e-2, as in every published method"),
    "split": ("test", "evaluation always judges on the task's test split"),
    "canonicalize": (False, "storing LoRA adapters in the SVD frame of B A made them harder to predict from the key "
                            "than one shared initialization"),
    "ae_lr": (1e-3, "p-diff's autoencoder and latent diffusion share one lr, as in the paper's code"),
}


def without_removed_keys(model: type[BaseModel], data: dict, source: str, where: str = "") -> dict:
    """A stored config or spec (a zoo's, a run's, a saved generator's) without the keys this version
    no longer has. A key at its old default behaved as the library does now and is dropped, and so is
    a section's ``device`` (now one top-level key, chosen where the work runs); any other value of a
    removed key made something this version cannot rebuild, and is refused by name."""
    out = {}
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None and key == "device":
            continue
        if field is None and key in REMOVED_KEYS:
            default, why = REMOVED_KEYS[key]
            if value != default:
                raise ConfigError(f"{source}: '{where}{key}' is {value!r}, and '{key}' was removed ({why}; "
                                  f"see docs/results.md, 'What did not work'): make it again without it")
            continue
        inner = field.annotation if field is not None else None
        if inner is not None and type(None) in getattr(inner, "__args__", ()):  # an optional section: X | None
            inner = next((a for a in inner.__args__ if a is not type(None)), None)
        if key == "generator" and model.__name__ == "ExperimentConfig" and isinstance(value, dict):
            inner = GENERATOR_SPECS.get(value.get("method", "pdiff"))
        if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, BaseModel):
            value = without_removed_keys(inner, value, source, f"{where}{key}.")
        out[key] = value
    return out


class StrictModel(BaseModel):
    """A config section that rejects unknown keys and names the allowed ones."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed and key == "device":
                    raise ValueError("'device' is one top-level key of the config now (device: auto, cpu or cuda), "
                                     "not a key of this section")
                if key not in allowed and key in REMOVED_KEYS:
                    raise ValueError(f"'{key}' was removed: {REMOVED_KEYS[key][1]} "
                                     "(docs/results.md, 'What did not work')")
                if key not in allowed:
                    raise ValueError(
                        f"unknown key '{key}'{did_you_mean(str(key), allowed)}; allowed keys: {', '.join(allowed)}"
                    )
        return data


class FactorySpec(BaseModel):
    """A registered factory's ``name`` (each subclass declares it, with its default) plus the
    factory's keyword arguments, given beside it in the YAML."""

    model_config = ConfigDict(extra="allow")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TaskSpec(FactorySpec):
    """What the zoo's networks learn: a task (``weightgen.tasks``: registered, an entry point, or a factory by
    path such as ``"./my_tasks.py:make_task"``) and its keyword arguments. A factory by path is imported here,
    so a bad one is named before any training, and a file path is stored absolute (``plugins.canonical``)."""

    name: str = "digits"
    code: str | None = None  # a class-subset code makes the task binary

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "TaskSpec":
        from weightgen.tasks import TASKS, parse_code

        base = (info.context or {}).get("base")
        try:
            check_kwargs(TASKS.get(self.name, base), self.kwargs, f"task '{self.name}'")
            if self.code is not None:
                parse_code(self.code, 10)
        except (RegistryError, ValueError) as e:
            raise ValueError(str(e)) from None
        self.name = canonical(self.name, base)
        return self


class NetSpec(FactorySpec):
    """The zoo's architecture: a registered net (``weightgen.nets``), an entry point, a factory by path such as
    ``"./my_nets.py:make_net"`` (imported and stored as ``TaskSpec`` says), or ``timm:<model>``; and its keyword
    arguments."""

    name: str = "mlp"

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "NetSpec":
        from weightgen.nets import NETS, TIMM_PREFIX

        if not self.name.startswith(TIMM_PREFIX):
            base = (info.context or {}).get("base")
            try:
                check_kwargs(NETS.get(self.name, base), self.kwargs, f"net '{self.name}'",
                             skip=("input_shape", "num_classes"))
            except RegistryError as e:
                raise ValueError(str(e)) from None
            self.name = canonical(self.name, base)
        return self


class TrainSpec(StrictModel):
    """The zoo's recipe: how each of its networks is trained."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(30, ge=0)


# Bit widths of zoo.compress.quantize: per-channel symmetric integers in [-(2^(b-1) - 1), 2^(b-1) - 1];
# 2 bits is ternary ({-1, 0, 1} times a channel's scale).
QUANT_BITS = (8, 4, 2)


class PruneSpec(StrictModel):
    """Magnitude pruning of every checkpoint (``weightgen.compress.prune``, with ``torch.nn.utils.prune``).

    ``recipe``: ``magnitude`` prunes the trained checkpoint and fine-tunes it ``finetune_steps`` with the
    mask fixed; ``lottery`` prunes iteratively from the run's own initialization (``rounds`` rounds of
    train, prune, rewind; a winning ticket). ``scope``: one threshold over every pruned tensor (``global``)
    or the same sparsity in each (``layer``). ``mask``: ``own`` (each checkpoint its own) or ``shared``
    (one mask from the zoo's mean magnitudes, every checkpoint fine-tuned under it; what the shared-mask
    tokenizer needs). ``include``: glob patterns of the tensors pruned, among those with 2 or more dims.
    """

    sparsity: float
    recipe: Literal["magnitude", "lottery"] = "magnitude"
    scope: Literal["global", "layer"] = "global"
    mask: Literal["own", "shared"] = "own"
    finetune_steps: int = Field(100, ge=0)
    rounds: int = Field(3, ge=1)
    include: list[str] = Field(default_factory=lambda: ["*weight"])

    @model_validator(mode="after")
    def _check(self) -> "PruneSpec":
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity {self.sparsity} is outside (0, 1): give the fraction of entries removed, "
                             "e.g. 0.9")
        if self.recipe == "lottery" and self.mask == "shared":
            raise ValueError("recipe 'lottery' finds each run's own mask; use mask: own with it")
        return self


class QuantizeSpec(StrictModel):
    """Per-channel symmetric integer quantization of the pruned tensors' kind (``include``), stored as
    integers plus one scale per output channel; the network is judged dequantized."""

    bits: int = 8
    include: list[str] = Field(default_factory=lambda: ["*weight"])

    @model_validator(mode="after")
    def _check(self) -> "QuantizeSpec":
        if self.bits not in QUANT_BITS:
            raise ValueError(f"bits {self.bits} is not supported; allowed: {', '.join(map(str, QUANT_BITS))} "
                             "(2 is ternary)")
        return self


class CompressSpec(StrictModel):
    """``zoo.compress`` (``weightgen.compress``): once every run is trained (after fold_bn and align), each
    checkpoint is pruned and/or quantized, rescored as what it now is, and stored dense in its shard and
    compactly (mask bits, integers and scales) beside it."""

    prune: PruneSpec | None = None
    quantize: QuantizeSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> "CompressSpec":
        if self.prune is None and self.quantize is None:
            raise ValueError("compress needs 'prune', 'quantize' or both")
        return self


class LoraSpec(StrictModel):
    """``zoo.lora`` (mode ``adapters``, ``weightgen.adapters.zoo``): the peft ``LoraConfig`` of every adapter
    (``r``, ``alpha``, the base's ``targets`` by module name) and the base model's own training
    (``base_steps`` of Adam on the task with no key)."""

    r: int = Field(4, ge=1)
    alpha: float = Field(8.0, gt=0)
    targets: list[str] = Field(default_factory=lambda: ["fc1", "fc2"])
    base_steps: int = Field(300, ge=0)


class ZooSpec(StrictModel):
    """How checkpoints are collected.

    - ``seeds``: ``runs`` independent runs; the last ``checkpoints`` states of each, ``every`` steps apart.
    - ``trajectory``: ``runs`` runs; ``checkpoints`` states along training from the init, spaced by ``spacing``.
    - ``tail``: train, then keep training only the parameters matching ``tail`` and save
      ``checkpoints`` states ``every`` steps apart (p-diff).
    - ``tasks``: runs for class-subset ``codes`` of the task, the code stored as the condition.
    - ``fields``: one field network per item of a field family (``weightgen.fields.zoo``), ``runs``
      of them, fitted many at once; the item's class is the condition.
    - ``adapters``: one LoRA adapter per key ``codes`` of a keyed task (``weightgen.adapters.zoo``),
      trained through peft on a base model made first, only the adapter's tensors stored (``lora``).
    - ``policies``: ``runs`` CMA-ES runs of a control policy (``weightgen.control.zoo``), the
      distribution's mean kept at ``checkpoints`` generations, each with its return.
    ``heldout``: runs (or, in ``tasks`` mode, codes) trained and stored but marked held out,
    so that generators never see them and evaluation can compare against them.
    ``align``: ``weight_matching`` puts every run's hidden units in the first run's order (ours).
    ``fold_bn``: every checkpoint's BatchNorms folded into the layers before them (ours).
    ``init``: where each run starts. ``run``: from its own seed's random weights. ``shared``:
    every run from the same weights (drawn with the zoo's seed); the run's seed still orders
    its data. ``pretrained``: one network is first trained on the base task (all classes)
    with the zoo's recipe, and every run fine-tunes it; a tensor whose shape differs (a
    ``tasks`` run's 2-class head) starts from the shared weights instead. In ``tasks`` mode
    a common start makes the code the only cause of the difference between two codes'
    networks, as in RPG's experiment, where every task is fine-tuned from one pretrained
    network: networks from independent inits differ by arbitrary permutations of their
    hidden units, so no generator could carry one code's solution over to the next.
    """

    mode: Literal["seeds", "trajectory", "tail", "tasks", "fields", "policies", "adapters"] = "seeds"
    runs: int = Field(1, ge=1)
    checkpoints: int = Field(1, ge=1)
    every: int = Field(1, ge=1)
    tail: list[str] = Field(default_factory=list)
    codes: Literal["all"] | int | list[str] = "all"
    heldout: int | list[str] = 0
    init: Literal["run", "shared", "pretrained"] = "run"
    # ``trajectory`` only: where along training the checkpoints fall. ``linear``: evenly spaced
    # steps (G.pt saves at random steps, evenly spread). ``quadratic`` (ours): step i of k at
    # last_step * (i / (k - 1))^2, so early training, where the loss falls fastest, is sampled
    # densely (the density falls as 1 / sqrt(step); never one step twice).
    spacing: Literal["linear", "quadratic"] = "linear"
    # Ours (``weightgen.zoo.align``): once every run is trained, permute each run's hidden units
    # (one permutation per run, found by weight matching on its last checkpoint) into the order of
    # the first training run, so independent runs share one ordering; any net whose hidden units
    # weightgen.nets.symmetry finds (hand-written, declared or traced).
    align: Literal["none", "weight_matching"] = "none"
    # Ours (``weightgen.zoo.fold``): once every run is trained, fold each BatchNorm into the conv or
    # linear layer before it and leave the BatchNorm an identity (same eval-mode function), so no
    # generated running statistic can contradict the generated weights; the tokenizer leaves the
    # BatchNorm entries, now one constant everywhere, out of the tokens.
    fold_bn: bool = False
    # Ours (``weightgen.compress``): every checkpoint pruned and/or quantized once the runs are trained.
    compress: CompressSpec | None = None
    # Mode ``adapters`` only: the LoRA adapters' settings (``LoraSpec``; its defaults when left out).
    lora: LoraSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> "ZooSpec":
        if self.lora is not None and self.mode != "adapters":
            raise ValueError(f"'lora' applies to mode 'adapters' only, not '{self.mode}'")
        if self.compress is not None and self.mode in ("tasks", "fields"):
            raise ValueError(f"'compress' applies to modes seeds, trajectory and tail, not '{self.mode}'")
        if self.compress is not None and self.compress.prune is not None and self.compress.prune.recipe == "lottery" \
                and self.init == "pretrained":
            raise ValueError("compress.prune.recipe 'lottery' rewinds to a run's initialization; use init: run or shared")
        if self.compress is not None and self.compress.prune is not None and self.compress.prune.recipe == "lottery" \
                and (self.mode == "tail" or self.align != "none" or self.fold_bn):
            raise ValueError("compress.prune.recipe 'lottery' rewinds to a run's initialization, which mode 'tail', "
                             "align and fold_bn change; use recipe: magnitude with them")
        if self.spacing != "linear" and self.mode not in ("trajectory", "policies"):
            raise ValueError(f"'spacing' applies to modes 'trajectory' and 'policies' only, not '{self.mode}'")
        if self.mode == "tail" and not self.tail:
            raise ValueError("mode 'tail' needs 'tail': glob patterns of the parameters that keep training")
        if self.mode != "tail" and self.tail:
            raise ValueError(f"'tail' patterns only apply to mode 'tail', not '{self.mode}'")
        return self


class TokenizerSpec(StrictModel):
    """How a checkpoint becomes tokens: which tensors, how many values a token holds, how values are scaled."""

    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    token_size: int | Literal["flat"] = 64
    buffers: bool = False  # also generate buffers (BatchNorm running stats)
    # tensor: one mean/std per tensor fitted on the zoo (RPG); none: raw values (p-diff);
    # element: one mean/std per parameter (ours: tokens hold deviations from the mean checkpoint).
    normalize: Literal["tensor", "element", "none"] = "tensor"
    # For a pruned zoo (zoo.compress.prune; weightgen.compress). none: every entry is generated and kept.
    # shared: tokens hold only the entries the one mask of every training checkpoint keeps (tokens and the
    # generator's work scale with the density). generated: every entry is generated and each sample keeps,
    # per pruned tensor, its largest values at the zoo's density (masks that differ between checkpoints).
    mask: Literal["none", "shared", "generated"] = "none"


# How a generator's learning rate moves over its fit (weightgen.diffusion.loop.train_steps):
# constant (every published method) or cosine to 0 (ours).
LRSchedule = Literal["constant", "cosine"]


class EMASpec(StrictModel):
    """What every generator shares: the fit's seed, the warmup of its ``ema`` and the fit it continues."""

    # The fit's seed (the generator's initial weights, its batches and noise); None: the experiment's
    # ``seed``, which also seeds the zoo. Set it to refit one generator on the same zoo with other draws.
    seed: int | None = None

    # Ours, off by default: the EMA's decay follows min(ema, (1 + n) / (10 + n)) over its n updates,
    # as diffusers' EMAModel does, so a fit of a few thousand steps at ema 0.999 samples from its
    # late weights rather than an average still weighted toward its initialization.
    ema_warmup: bool = False

    # Ours: a fitted generator's folder whose weights (and EMA) this fit starts from, so a fit can
    # be continued for more steps without redoing the first ones. It must be the same method and
    # architecture on a zoo of the same net (a mismatch names the entry and both shapes). The
    # steps, learning rate and schedule given here run anew, with a fresh optimizer; set
    # ``seed`` to another value than the first fit's, or its batches and noise are drawn again.
    init_from: str | None = None


class DiffusionSpec(StrictModel):
    """The diffusion process: T steps of DDPM's linear noise schedule (``diffusion/schedule.py``),
    what the denoiser predicts, and the starting noise of sampling."""

    timesteps: int = Field(1000, ge=1)
    # epsilon (DDPM, RPG, p-diff), sample (x0: G.pt) or v_prediction (ours: the input passes through
    # near the data, so the last sampling steps cannot blur a precise network; see diffusion/schedule.py).
    prediction: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    # A sampling setting (ours): the standard deviation of the starting noise. Below 1 draws each
    # network nearer the centre of what the generator learned (low-temperature sampling; 0: one
    # network per condition, and per permutation state for RPG). With DDIM (eta 0) the starting
    # noise is the only noise; DDPM adds unscaled noise at every step, so there it changes little.
    temperature: float = Field(1.0, ge=0)


class PDiffSpec(EMASpec):
    """p-diff (Wang et al. 2024): 1D conv autoencoder with noise augmentation + latent DDPM.

    Defaults follow the paper and its code: input noise 0.001, latent noise 0.1 mixed as
    ``x*(1-f) + f*eps``; AdamW lr 1e-3; 30k autoencoder steps then 30k diffusion steps on
    full batches of the (up to 200) checkpoints; the 'medium' autoencoder (fold 5, kernel 5).
    """

    method: Literal["pdiff"] = "pdiff"
    fold_rate: int = Field(5, ge=2)
    kernel_size: int = Field(5, ge=1)
    enc_channels: list[int] = Field(default_factory=lambda: [4, 4, 4, 4])
    dec_channels: list[int] = Field(default_factory=lambda: [4, 256, 256, 8])
    input_noise: float = Field(0.001, ge=0)
    latent_noise: float = Field(0.1, ge=0)
    ae_steps: int = Field(30000, ge=0)
    diffusion_steps: int = Field(30000, ge=0)
    lr: float = Field(1e-3, gt=0)  # both loops, as in the paper's code
    weight_decay: float = Field(2e-6, ge=0)
    batch_size: int = Field(200, ge=1)
    denoiser_channels: list[int] = Field(default_factory=lambda: [64, 128, 256])
    ema: float | None = None  # p-diff trains without EMA; e.g. 0.999 turns it on
    lr_schedule: LRSchedule = "constant"  # both loops; published: constant
    diffusion: DiffusionSpec = Field(default_factory=DiffusionSpec)

    @model_validator(mode="after")
    def _check(self) -> "PDiffSpec":
        if not self.enc_channels or not self.dec_channels or not self.denoiser_channels:
            raise ValueError("enc_channels, dec_channels and denoiser_channels need at least one stage each")
        if self.enc_channels[-1] != self.dec_channels[0]:
            raise ValueError(f"dec_channels must start with the latent width enc_channels[-1] = {self.enc_channels[-1]}")
        if len(self.enc_channels) != len(self.dec_channels):
            raise ValueError("enc_channels and dec_channels need the same number of stages")
        return self


def _metric_name(value: Any) -> Any:
    """A checkpoint metric's name as a zoo records it, ``<split>_<metric>``: the metric is any of the task's
    (classification: loss, accuracy and error = 1 - accuracy; regression: loss, psnr). Whether the zoo
    records it is checked when a generator is built from the zoo (``generators.base.member_metric``)."""
    split, _, metric = value.partition("_") if isinstance(value, str) else ("", "", "")
    if split not in ("train", "val", "test") or not metric or metric.strip("abcdefghijklmnopqrstuvwxyz0123456789_"):
        raise ValueError("a metric is <split>_<metric> with split train, val or test and the metric in lower case, "
                         f"e.g. test_loss, test_accuracy, test_error or test_psnr; got {value!r}")
    return value


# A checkpoint metric a generator can be conditioned on.
MetricName = Annotated[str, BeforeValidator(_metric_name)]


class RPGSpec(EMASpec):
    """RPG (Wang et al. 2025, "Recurrent Diffusion for Large-Scale Parameter Generation").

    A recurrent model reads one input per token (its 2D sinusoidal position embedding plus
    the permutation state of the checkpoint's source run) and emits a prototype per token;
    a 1D conv U-Net denoises each token as a 1-channel signal, conditioned on its
    prototype. Defaults follow the paper and released code (2 Mamba layers, permutation
    states, epsilon prediction, T = 1000 linear, random token subsets per step, chunked
    sampling) except where noted.
    """

    method: Literal["rpg"] = "rpg"
    backbone: Literal["mamba", "lstm", "transformer", "none"] = "mamba"  # none: prototype = input embedding
    d_model: int = Field(256, ge=2)  # the released code uses the token size (8192); 256 suits small nets
    layers: int = Field(2, ge=1)
    # mambapy materializes (batch, tokens, 2*d_model, d_state) in its parallel scan; the
    # released code's 128 (CUDA kernels, no materialization) would cost 8x the memory here.
    mamba_d_state: int = Field(16, ge=1)
    permutation_state: bool = True  # one learned embedding per source run; a random one per sample
    # positions: the released code (positions + states only); tokens: the paper's text (the
    # previous token's clean values too; autoregressive, token by token, at sampling).
    recurrent_input: Literal["positions", "tokens"] = "positions"
    unet_channels: list[int] = Field(default_factory=lambda: [32, 64, 128])
    kernel_size: int = Field(7, ge=1)
    # Ours, speed: the denoiser's training passes under bfloat16 autocast; its weights, the
    # optimizer, the EMA, the recurrent model and sampling stay float32. Faster where the
    # hardware has bfloat16 (AMX, a GPU; measured on AMX only, docs/results.md, "Speed").
    denoiser_precision: Literal["float32", "bfloat16"] = "float32"
    # task_code: conditioned on the class-subset code of each checkpoint's task (a ``tasks``
    # zoo) through a learned embedding added to the recurrent input; sample with a code.
    # metric: conditioned on each checkpoint's ``metric`` (sin/cos frequency features, as
    # G.pt embeds its metrics); sample with the metric wanted.
    condition: Literal["none", "task_code", "metric"] = "none"
    metric: MetricName = "test_loss"
    # Which tokens the condition reaches: "all" (ours, the default), or the last N tokens
    # only, as in RPG's released code (N = 8), where the body of the network ignores the task.
    condition_tokens: Literal["all"] | Annotated[int, Field(ge=1)] = "all"
    # The released code predicts epsilon; x0 (``sample``) and ``v_prediction`` are ours and learn
    # in far fewer steps (docs/results.md, "Whole networks").
    diffusion: DiffusionSpec = Field(default_factory=DiffusionSpec)
    steps: int = Field(50000, ge=0)
    lr: float = Field(1e-3, gt=0)  # the released code: 3e-5 (8-bit AdamW, 8192-wide tokens)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1)  # checkpoints per step
    tokens_per_step: int = Field(256, ge=1)  # of each checkpoint; the recurrent model still sees all
    ema: float | None = Field(None, ge=0, lt=1)  # the released code has no EMA
    # The released code keeps the rate constant; cosine (ours) decays it to 0 over ``steps``.
    lr_schedule: LRSchedule = "constant"
    sample_chunk: int = Field(1024, ge=1)  # tokens (over all samples) denoised at once

    @model_validator(mode="after")
    def _check(self) -> "RPGSpec":
        if not self.unet_channels or min(self.unet_channels) < 1:
            raise ValueError("unet_channels must be a non-empty list of positive channel counts")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length convolutions), got {self.kernel_size}")
        return self


class GPTSpec(EMASpec):
    """G.pt (Peebles et al. 2022, "Learning to Learn with Generative Models of Neural Network Checkpoints").

    Trained on pairs (theta, theta') of checkpoints from one run of a ``trajectory`` zoo, theta'
    later: a transformer denoises theta' given theta, theta's metric and the target metric.
    Sampling takes a prompt: a start checkpoint, its metric and the metric wanted
    (weightgen/generators/gpt.py). Defaults follow the paper and its released code (x0 prediction,
    T = 1000 linear, AdamW 4e-4, weight decay 0.1, cosine lr, permutation augmentation) except
    where noted; sizes suit small nets. Evidence: docs/results.md, 'Prompted metrics'.
    """

    method: Literal["gpt"] = "gpt"
    # The paper's transformers are far larger (hundreds of millions of parameters); a 256-wide,
    # 4-layer model suits nets of a few thousand values.
    d_model: int = Field(256, ge=2)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    # Which checkpoint metric conditions generation: <split>_<metric>, any metric the zoo records
    # (classification: loss, accuracy, error = 1 - accuracy; the paper prompts test loss or test error).
    metric: MetricName = "test_loss"
    # Published: x0 prediction ("sample"): theta plus zero-started heads, so an untrained model predicts
    # "no update". v_prediction (ours) keeps theta in the output too (``GPTNet.forward``); epsilon has no
    # residual to theta.
    diffusion: DiffusionSpec = Field(default_factory=lambda: DiffusionSpec(prediction="sample"))
    steps: int = Field(20000, ge=0)  # ours: a short fit for small zoos; the paper trains far longer
    lr: float = Field(4e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    # Published: 0.9999. Ours: 0.999, since an average over ~10k steps would still be mostly
    # the initial weights after a fit of a few thousand steps.
    ema: float | None = Field(0.999, ge=0, lt=1)
    # Released configs (configs/train/mnist_loss.yaml): a cosine decay to 0 (their 5-epoch warmup
    # left out) and gradients clipped at 0.75.
    lr_schedule: LRSchedule = "cosine"
    grad_clip: float | None = Field(0.75, gt=0)
    batch_size: int = Field(64, ge=1)  # pairs per step (ours, sized for a CPU; the paper's batches are larger)
    # How the transformer reads a network (weightgen/generators/gpt_units.py). ``chunks`` (published):
    # one token per chunk of a layer, each position with its own encoder and head. ``units`` (ours): one
    # token per hidden unit, equivariant to permuting hidden units where no value belongs to two units
    # (one hidden layer; permutation augmentation is then skipped). ``graph`` (ours): ``units`` with the
    # weights between two hidden layers as edges between unit tokens, exactly equivariant at any depth.
    architecture: Literal["chunks", "units", "graph"] = "chunks"
    # How an edge of ``architecture: graph`` reads its two units: ``sum`` adds a linear map of each, as
    # graph metanetworks do; ``bilinear`` (ours) adds their elementwise product too, the form of SGD's
    # update of a weight (input activation times output error).
    edge_input: Literal["sum", "bilinear"] = "sum"
    # The same random permutation of hidden units applied to theta and theta' (weightgen.nets.symmetry).
    permutation_augmentation: bool = True
    # Ours, optional: reweight the pairs so the metric of theta' falls equally often into each of
    # this many equal-width bins of the zoo's range (weightgen/generators/gpt_pairs.py); None: the
    # zoo's own spread, as published, where most targets are trained networks.
    balance_targets: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _check(self) -> "GPTSpec":
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.edge_input != "sum" and self.architecture != "graph":
            raise ValueError(f"edge_input {self.edge_input!r} shapes the edges of architecture 'graph' "
                             f"(got architecture {self.architecture!r}): set architecture: graph, or leave edge_input at 'sum'")
        return self


# ddpm, ddim, or dpm: DPM-Solver++ (diffusion/schedule.py)
SAMPLERS = ("ddpm", "ddim", "dpm")


class SampleSpec(StrictModel):
    """How networks are drawn from a fitted generator: how many, from which seed, with which sampler."""

    n: int = Field(100, ge=1)
    seed: int = 0
    sampler: Literal["ddpm", "ddim", "dpm"] = "ddpm"
    steps: int | None = Field(None, ge=1)  # default: T for DDPM, 60 for DDIM, 25 for DPM-Solver++
    batch_size: int = Field(100, ge=1)  # samples held in memory at once


class EvaluateSpec(StrictModel):
    """How samples are judged on the task's test split (``weightgen.evaluate.judge``): the noise
    levels of the noise-added baseline and how many noise-added networks each level gets."""

    sigmas: list[float] = Field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.15])
    n_noise: int = Field(100, ge=1)
    # Ours, off by default: recompute the BatchNorm statistics of every made network (weight average,
    # noise-added originals, samples) on the training inputs before judging it (evaluate/recalibrate.py).
    recalibrate_bn: bool = False


GENERATOR_SPECS: dict[str, type[BaseModel]] = {"pdiff": PDiffSpec, "rpg": RPGSpec, "gpt": GPTSpec}
GENERATOR_METHODS = tuple(GENERATOR_SPECS)


def _generator_method(value: Any) -> Any:
    """The discriminator: ``method`` of a dict (``pdiff`` when omitted) or of a spec."""
    return value.get("method", "pdiff") if isinstance(value, dict) else getattr(value, "method", None)


def _known_method(value: Any) -> Any:
    # Checked before the union so a wrong method is named, with the allowed ones, in plain words.
    method = _generator_method(value)
    if isinstance(value, dict) and method not in GENERATOR_METHODS:
        raise ValueError(f"unknown generator method {method!r}{did_you_mean(str(method), list(GENERATOR_METHODS))}; "
                         f"allowed methods: {', '.join(GENERATOR_METHODS)}")
    return value


GeneratorSpec = Annotated[
    Union[Annotated[PDiffSpec, Tag("pdiff")], Annotated[RPGSpec, Tag("rpg")], Annotated[GPTSpec, Tag("gpt")]],
    Discriminator(_generator_method),
    BeforeValidator(_known_method),
]


class ExperimentConfig(StrictModel):
    name: str = "experiment"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where zoos train and generators fit and sample
    task: TaskSpec = Field(default_factory=TaskSpec)
    net: NetSpec = Field(default_factory=NetSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    zoo: ZooSpec = Field(default_factory=ZooSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    generator: GeneratorSpec = Field(default_factory=PDiffSpec)
    sample: SampleSpec = Field(default_factory=SampleSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        if self.zoo.fold_bn and self.evaluate.recalibrate_bn:
            # a folded BatchNorm given recomputed statistics normalizes away the scale and shift folded into its layer
            raise ValueError("evaluate.recalibrate_bn recomputes the BatchNorm statistics that zoo.fold_bn folded into "
                             "the layers before them, which would undo the fold; set one of them to false")
        return self


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        suffix = f" (got {got!r})" if e["type"] not in ("value_error", "missing") and not isinstance(got, dict) else ""
        lines.append(f"  {loc or '<top>'}: {msg}{suffix}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>", stored: bool = False,
                 base: str | Path | None = None) -> ExperimentConfig:
    """``data`` as a validated config. ``stored``: written by the library (a zoo's or a run's config),
    so keys an earlier version wrote are dropped where they meant what the library does now.
    ``base``: the folder that relative file paths of factories are read from (default: the current one)."""
    if stored and data:
        data = without_removed_keys(ExperimentConfig, data, source)
    try:
        return ExperimentConfig.model_validate(data or {}, context={"base": base})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(path: str | Path, stored: bool = False) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    return parse_config(data, str(path), stored, base=path.resolve().parent)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
