"""Run configuration: TOML presets, command-line overrides, validation.

A config has sections ``data``, ``model``, ``diffusion``, ``train``, ``sample`` and ``eval``; each is a
dataclass whose fields are the only keys allowed. Unknown keys are rejected with the list of valid
ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "configs"
#: ``diffusion.prediction`` when a config leaves it empty: the target each process trains by default
DEFAULT_PREDICTION = {"flow": "flow"}


@dataclass
class DataConfig:
    name: str = "moons"  # a 2-D toy name, "digits", "mnist", "folder" or "array"
    n_train: int = 100_000  # toy data: points drawn for training
    n_test: int = 5_000
    seed: int = 0
    path: str = ""  # image folder or .npy/.npz file for name = "folder" / "array"
    image_size: int = 0  # resize / centre-crop folder images to this size (0: keep)
    channels: int = 0  # 1 = grayscale, 3 = RGB, 0 = as the data is
    test_fraction: float = 0.1  # held-out share of image data (fixed, recorded split)


@dataclass
class ModelConfig:
    kind: str = "mlp"  # "mlp" (vector data) or "unet" (images)
    hidden: int = 256  # mlp
    depth: int = 4  # mlp
    emb_dim: int = 128  # mlp
    channels: int = 64  # unet base channels
    channel_mult: list = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list = field(default_factory=lambda: [7])
    dropout: float = 0.1
    scale_shift_norm: bool = True
    learn_sigma: bool = False
    num_classes: int = 0  # > 0: class-conditional, with a null class for guidance
    fourier_features: list = field(default_factory=list)  # unet: VDM's sin/cos(2^n pi x) inputs, e.g. [7, 8]


@dataclass
class DiffusionConfig:
    process: str = "vp"  # "vp" (DDPM), "ve" (NCSN, score-SDE VE), "edm" (Karras et al.), "vdm" or "flow"
    schedule: str = "linear"  # vp
    timesteps: int = 1000  # vp: T steps; ve/edm: T geometric noise levels
    prediction: str = ""  # "": the process's own (flow: "flow", else "eps"); vp: eps, x0, v or flow; ve: eps
    variance: str = "fixed_small"  # ancestral sampling's variance; "learned" needs model.learn_sigma = true
    objective: str = "simple"  # vp: "simple" (L_simple), "hybrid" (+ 0.001 L_vlb, learned variance) or "vlb"
    weighting: str = "none"  # vp: weighting of L_simple: "none", "min_snr" or "p2" (see docs)
    min_snr_gamma: float = 5.0  # min-SNR-gamma's gamma
    p2_gamma: float = 1.0  # P2: 1 / (p2_k + SNR)^p2_gamma on the eps error
    p2_k: float = 1.0
    sigma_min: float = 0.0  # ve/edm/flow; 0: the process's default (ve 0.01, edm 0.002, flow t_min 0.001)
    sigma_max: float = 0.0  # ve/edm/flow; 0: default (ve 50, edm 80, flow t_max 0.999)
    sigma_data: float = 0.5  # edm: the data's standard deviation
    p_mean: float = -1.2  # edm: training ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    vdm_schedule: str = "learned"  # vdm (continuous-time VDM): "learned", "linear" or "cosine"
    gamma_min: float = -13.3  # vdm: -log SNR at t = 0 (data end); the initial value when learned
    gamma_max: float = 5.0  # vdm: -log SNR at t = 1 (prior end)
    learn_endpoints: bool = True  # vdm: train gamma_min / gamma_max with the bound
    t_law: str = "uniform"  # flow: training t "uniform" or "logit_normal" (SD3)
    logit_mean: float = 0.0  # flow: t = sigmoid(logit_mean + logit_std n)
    logit_std: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 200
    lr_schedule: str = "cosine"  # "cosine" (to 0 over steps or max_minutes) or "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    max_minutes: float = 0.0  # 0: no wall-clock limit; > 0 ties the cosine LR to the clock (no exact resume)
    log_every: int = 100
    ckpt_every: int = 2_000
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is the global batch)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast on CPU and CUDA)
    channels_last: bool = False
    compile: bool = False
    keep_checkpoints: int = 3  # step-numbered checkpoints kept besides the latest
    sample_every: int = 0  # write a sample grid every N steps (0: never)
    label_dropout: float = 0.0  # class-conditional: share of labels replaced by the null class
    t_sampler: str = "uniform"  # "uniform" or "importance" (p_t ~ RMS of the last 10 losses at t; vp only)


@dataclass
class SampleConfig:
    sampler: str = "ancestral"
    steps: int = 0  # 0: all T steps
    spacing: str = ""  # "": the sampler's preferred spacing (samplers.DEFAULT_SPACING)
    eta: float = -1.0  # ddim, dpm++3m, dpm++2m-sde; < 0: the sampler's default (0, 0, 1)
    n: int = 5_000
    seed: int = 1


@dataclass
class EvalConfig:
    n: int = 5_000  # points compared by the sliced Wasserstein distance
    projections: int = 1_000
    floor_pairs: int = 5  # fresh-data pairs averaged for the distance's noise floor
    bound_n: int = 1_000  # held-out points scored by the bound


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check ``value`` against the type of the field's default (ints are accepted as floats)."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where} must be of type {kind.__name__}, got {value!r}")
    return value


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config`, rejecting unknown sections and keys by name."""
    cfg = Config()
    top = _fields(Config)
    for key, value in raw.items():
        if key not in top:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(top)}")
        if key == "name":
            cfg.name = check_name(_coerce(value, cfg.name, "name"))
            continue
        if not isinstance(value, dict):
            raise ValueError(f"config section [{key}] must be a table, got {value!r}")
        section = getattr(cfg, key)
        allowed = _fields(type(section))
        for k, v in value.items():
            if k not in allowed:
                raise ValueError(
                    f"unknown key {k!r} in [{key}]; valid keys: {', '.join(sorted(allowed))}"
                )
            setattr(section, k, _coerce(v, getattr(section, k), f"{key}.{k}"))
    if not cfg.diffusion.prediction:
        cfg.diffusion.prediction = DEFAULT_PREDICTION.get(cfg.diffusion.process, "eps")
    return cfg


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """A run name becomes the folder ``runs/<name>``: letters, digits, ``.``, ``_``, ``-``, starting with
    a letter or digit, no ``..``, so it can never point outside ``runs/``."""
    if not _NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"name {name!r} is not allowed: use letters, digits, '.', '_' and '-' (starting with a letter "
            "or digit, no '..', at most 128 characters); it names the folder runs/<name>"
        )
    return name


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> ``(["train", "lr"], 0.001)``; the value is read as a TOML value and
    falls back to a plain string (``data.name=moons``)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    path, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return path.strip().split("."), parsed


def resolve_path(spec: str) -> Path:
    """A config file path, or the name of a bundled preset (``toy2d``)."""
    p = Path(spec)
    if p.is_file():
        return p
    preset = PRESETS_DIR / f"{spec}.toml"
    if preset.is_file():
        return preset
    names = sorted(q.stem for q in PRESETS_DIR.glob("*.toml"))
    raise FileNotFoundError(f"config {spec!r} is neither a file nor a preset; presets: {', '.join(names)}")


def load(spec: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a TOML file or preset, apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if spec is not None:
        with open(resolve_path(spec), "rb") as fh:
            raw = tomllib.load(fh)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return from_dict(raw)


def save(cfg: Config, path: str | Path) -> None:
    import tomli_w

    Path(path).write_text(tomli_w.dumps(cfg.to_dict()))
