"""Load a CNN teacher (timm, torchvision or a dfkd teacher file); find its BN layers, normalisation and embedding."""
from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn

from synth.errors import UserError, first_line

TEACHER_FILE_FORMAT = "dfkd-teacher"
TEACHER_FILE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FROZEN_BN_NAMES = ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")
WEIGHTS_OPTION = "pass the weights file with --teacher-weights"


@dataclass
class Teacher:
    """A teacher in eval mode with everything synthesis and distillation need to know about it."""

    model: nn.Module
    spec: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    classifier: nn.Module
    weights_sha256: str
    class_names: Optional[list[str]] = None
    bn_layers: list[nn.Module] = field(default_factory=list)
    grayscale: bool = False  # the teacher saw grayscale images (R = G = B): synthesis optimises one channel
    head: Optional[nn.Module] = None

    @property
    def embedding_module(self) -> nn.Module:
        """The module whose input is the pooled penultimate embedding: the head (torchvision's multi-layer
        `classifier` Sequential, e.g. MobileNetV3 or VGG) or, where the head is one layer, the classifier itself."""
        return self.head if self.head is not None else self.classifier

    def to(self, device: torch.device | str) -> "Teacher":
        """Move the model to a device (in place) and return self."""
        self.model.to(device)
        return self

    def pixel_bounds(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of valid pixels [0, 1] in normalised space, shaped (1, 3, 1, 1)."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (0 - mean) / std, (1 - mean) / std

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] (B, 3, H, W) to the teacher's normalised input space."""
        mean = torch.tensor(self.mean, device=images01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images01.device).view(1, 3, 1, 1)
        return (images01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] (clamped)."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def gray_affine(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), (1, 3, 1, 1) each: one channel in the first channel's normalised space (B, 1, H, W)
        * scale + shift is the same gray image in the teacher's 3-channel normalised space."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return std[:, :1] / std, (mean[:, :1] - mean) / std

    def describe(self) -> dict[str, Any]:
        """A JSON-able description stored in shards and manifests."""
        return {
            "spec": self.spec,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "weights_sha256": self.weights_sha256,
            "bn_layers": len(self.bn_layers),
            **({"grayscale": True} if self.grayscale else {}),
        }


class EmbeddingTap:
    """Captures a module's input on every forward; given `Teacher.embedding_module`, the pooled penultimate
    features (the input of the whole classification head, not of its last layer)."""

    def __init__(self, module: nn.Module):
        self.value: Optional[torch.Tensor] = None
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        self.value = inputs[0].flatten(1)

    def remove(self) -> None:
        """Detach the hook."""
        self._handle.remove()


def find_bn_layers(model: nn.Module) -> list[nn.Module]:
    """All BatchNorm layers with running statistics, in forward-definition order (BatchNormAct2d, SyncBN, frozen BN)."""
    layers = []
    for name, module in model.named_modules():
        is_bn = isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) or type(module).__name__ in _FROZEN_BN_NAMES
        if not is_bn:
            continue
        if getattr(module, "running_mean", None) is None or getattr(module, "running_var", None) is None:
            raise UserError(
                f"BatchNorm layer '{name}' has no running statistics (track_running_stats=False); "
                "synthesis needs a teacher whose BN layers keep running mean and variance"
            )
        layers.append(module)
    return layers


def running_bn_layers(model: nn.Module, layers: list[nn.Module], input_size: int) -> list[nn.Module]:
    """The subset of `layers` that a forward pass in eval mode actually runs (one dummy image at `input_size`).

    Some architectures hold BN layers that inference never reaches (e.g. auxiliary heads run only in training);
    their hooks would never fire, so the BN loss must not wait for them. If the dummy forward fails, all layers are
    kept (the error then shows up in synthesis with its own message)."""
    seen: set[int] = set()
    handles = [layer.register_forward_hook(lambda m, i, o: seen.add(id(m))) for layer in layers]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    except Exception:  # noqa: BLE001 - a model that needs another input keeps every layer
        return list(layers)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [layer for layer in layers if id(layer) in seen]


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and raw bytes (sorted by name): identifies the weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a raw state_dict, a dict holding `state_dict` or `model`, or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user problem
        raise UserError(f"cannot read weights file '{path}': {first_line(exc)}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file '{path}' holds no state_dict (expected tensors by name, or a dict with 'state_dict' or 'model')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_teacher(spec: str, weights: Optional[str] = None, device: str | torch.device = "cpu") -> Teacher:
    """Load `timm:<name>[.<tag>]`, `torchvision:<name>` or a dfkd teacher file, in eval mode, on `device`."""
    if spec.startswith("timm:"):
        teacher = _load_timm(spec, weights)
    elif spec.startswith("torchvision:"):
        teacher = _load_torchvision(spec, weights)
    elif Path(spec).is_file():
        teacher = _load_teacher_file(spec, weights)
    else:
        raise UserError(
            f"teacher '{spec}' is not timm:<name>[.<tag>], torchvision:<name>, or an existing teacher file"
        )
    teacher.model.eval().requires_grad_(False)
    return teacher.to(device)


def save_teacher_file(path: str | Path, arch: str, arch_kwargs: dict, model: nn.Module, mean, std,
                      input_size: int, class_names: Optional[list[str]] = None, extra: Optional[dict] = None,
                      grayscale: bool = False) -> None:
    """Write a teacher file: architecture (a timm name and kwargs), weights, normalisation, class names."""
    payload = {
        "format": TEACHER_FILE_FORMAT,
        "format_version": TEACHER_FILE_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "input_size": int(input_size),
        "class_names": list(class_names) if class_names else None,
        "grayscale": bool(grayscale),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def teacher_from_model(model: nn.Module, spec: str, mean, std, input_size: int, classifier_name: str,
                       class_names: Optional[list[str]] = None, head_name: Optional[str] = None) -> Teacher:
    """Wrap a loaded model: its classifier (the last layer, which sets the class count), the head whose input is
    the embedding (`head_name`, default the classifier), and the BN layers that a forward pass runs."""
    if not all(math.isfinite(float(v)) for v in (*mean, *std)) or min(float(v) for v in std) <= 0:
        raise UserError(f"teacher '{spec}' has a degenerate normalisation (mean {list(mean)}, std {list(std)}); "
                        "accepted: finite means and stds > 0")
    classifier = model.get_submodule(classifier_name)
    num_classes = classifier.weight.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        class_names = None
    bn_layers = running_bn_layers(model, find_bn_layers(model), int(input_size))
    if not bn_layers:
        raise UserError(f"teacher {spec} runs no BatchNorm layer in inference; DeepInversion needs BN running "
                        "statistics to match")
    return Teacher(
        model=model, spec=spec, num_classes=num_classes, mean=tuple(mean), std=tuple(std),
        input_size=int(input_size), classifier=classifier, weights_sha256=state_dict_sha256(model.state_dict()),
        class_names=class_names, bn_layers=bn_layers,
        head=model.get_submodule(head_name) if head_name else None,
    )




def _classifier_name(model: nn.Module) -> str:
    """The name of the last Linear (or 1x1 conv) layer: the classifier whose input is the embedding."""
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            name = module_name
    if name is None:
        raise UserError("the teacher has no Linear classifier layer whose input could serve as its embedding")
    return name


def _num_classes_from(state_dict: dict[str, torch.Tensor], classifier_name: str, source: str) -> int:
    key = f"{classifier_name}.weight"
    if key not in state_dict:
        raise UserError(f"weights '{source}' have no classifier weight '{key}'; they do not fit this architecture")
    return int(state_dict[key].shape[0])


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, spec: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        missing, unexpected = _key_mismatch(model, state_dict)
        detail = f"missing {missing[:3]}, unexpected {unexpected[:3]}" if (missing or unexpected) else "tensor shapes differ"
        raise UserError(f"weights '{source}' do not fit {spec}: {detail}") from exc


def _key_mismatch(model: nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    own = set(model.state_dict())
    return sorted(own - set(state_dict)), sorted(set(state_dict) - own)


def _check_bn(model: nn.Module, spec: str) -> None:
    if not find_bn_layers(model):
        raise UserError(f"teacher {spec} has no BatchNorm layers; DeepInversion needs BN running statistics to match")


def _load_timm(spec: str, weights: Optional[str]) -> Teacher:
    import timm

    name = spec.removeprefix("timm:")
    if not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}' (see timm.list_models(); tags as in 'regnety_160.deit_in1k')")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise UserError(f"timm model '{name}': {exc}") from None
    model = timm.create_model(name, pretrained=False)
    _check_bn(model, spec)
    classifier_name = getattr(cfg, "classifier", None) or _classifier_name(model)
    if weights:
        state_dict = read_state_dict(weights)
        num_classes = _num_classes_from(state_dict, classifier_name, weights)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        _load_strict(model, state_dict, weights, spec)
    else:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": _timm_weights_file(name, cfg)})
    cfg = model.pretrained_cfg
    class_names = _imagenet_names(model) if model.num_classes == 1000 else None
    return teacher_from_model(model, spec, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                   cfg.get("input_size", (3, 224, 224))[-1], classifier_name, class_names)


def _imagenet_names(model: nn.Module) -> Optional[list[str]]:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        info = ImageNetInfo(infer_imagenet_subset(model) or "imagenet-1k")
        return [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:  # noqa: BLE001 - class names are optional decoration
        return None


def _timm_weights_file(name: str, cfg: Any) -> str:
    """Resolve timm weights: the Hugging Face cache, else a download (failing fast offline)."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if cfg is None or not (hub_id or getattr(cfg, "url", None)):
        raise UserError(f"timm model '{name}' has no pretrained weights; pass --teacher-weights FILE")
    if hub_id:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return cached
        where = f"{hub_id}/{filenames[0]}"
        _require_network(constants.ENDPOINT, where, f"in the Hugging Face cache ({constants.HF_HUB_CACHE})",
                         offline=constants.HF_HUB_OFFLINE)
        try:
            return hf_hub_download(hub_id, filenames[0])
        except Exception as exc:  # noqa: BLE001 - any download failure is reported the same way
            raise UserError(f"could not download {where}: {first_line(exc)}; "
                            "pass --teacher-weights FILE instead") from None
    return hub_cached_download(cfg.url)


# Torchvision builds these with auxiliary heads (training only) and transform_input=False unless pretrained weights
# are asked for; its pretrained builders use transform_input=True and drop the auxiliary heads after loading. dfkd
# builds them the same way, without the auxiliary heads (their BN layers never run in eval mode).
_TORCHVISION_KWARGS = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": False},
    "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": False},
}
_TORCHVISION_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def build_torchvision(name: str, num_classes: Optional[int] = None) -> nn.Module:
    """A torchvision classifier with random weights, built as torchvision builds it for its pretrained weights."""
    import torchvision

    kwargs = dict(_TORCHVISION_KWARGS.get(name, {}))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, weights=None, **kwargs)


def torchvision_head_name(model: nn.Module, classifier_name: str) -> str:
    """The top-level module holding the classifier (`fc`, or a `classifier` Sequential such as MobileNetV3's
    Linear-Hardswish-Dropout-Linear): its input is the pooled penultimate embedding."""
    return classifier_name.split(".")[0]


def _torchvision_input_size(name: str) -> int:
    import torchvision

    try:
        crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
        return int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    except Exception:  # noqa: BLE001 - no weights enum: the usual ImageNet size
        return 224


def _load_torchvision(spec: str, weights: Optional[str]) -> Teacher:
    import torchvision

    name = spec.removeprefix("torchvision:")
    if name not in torchvision.models.list_models():
        raise UserError(f"unknown torchvision model '{name}' (see torchvision.models.list_models())")
    model = build_torchvision(name)
    _check_bn(model, spec)
    classifier_name = _classifier_name(model)
    class_names = None
    if weights:
        state_dict = read_state_dict(weights)
        source = weights
    else:
        try:
            enum = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError):
            raise UserError(f"torchvision model '{name}' has no pretrained weights; pass --teacher-weights FILE") from None
        state_dict = read_state_dict(hub_cached_download(enum.url))
        source, class_names = enum.url, enum.meta.get("categories")
    if name in _TORCHVISION_KWARGS:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_TORCHVISION_AUX_PREFIXES)}
    num_classes = _num_classes_from(state_dict, classifier_name, source)
    model = build_torchvision(name, num_classes)
    _load_strict(model, state_dict, source, spec)
    return teacher_from_model(model, spec, IMAGENET_MEAN, IMAGENET_STD, _torchvision_input_size(name),
                              classifier_name, class_names, torchvision_head_name(model, classifier_name))


def _load_teacher_file(path: str, weights: Optional[str]) -> Teacher:
    import timm

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read teacher file '{path}': {first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != TEACHER_FILE_FORMAT:
        raise UserError(f"'{path}' is not a dfkd teacher file (written by `dfkd train-teacher`)")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > TEACHER_FILE_VERSION:
        raise UserError(f"teacher file '{path}' has format_version {version!r}; "
                        f"this dfkd reads up to {TEACHER_FILE_VERSION}, upgrade dfkd")
    _check_teacher_payload(path, payload, weights is not None)
    arch = payload["arch"].removeprefix("timm:")
    if not timm.is_model(arch):
        raise UserError(f"teacher file '{path}' names unknown timm architecture '{arch}'")
    try:
        model = timm.create_model(arch, pretrained=False, **payload["arch_kwargs"])
    except Exception as exc:  # noqa: BLE001 - arch_kwargs the architecture does not take
        raise UserError(f"teacher file '{path}': cannot build {arch} with arch_kwargs {payload['arch_kwargs']} "
                        f"({type(exc).__name__})") from None
    _check_bn(model, path)
    state_dict = read_state_dict(weights) if weights else payload["state_dict"]
    _load_strict(model, state_dict, weights or path, path)
    teacher = teacher_from_model(model, path, payload["mean"], payload["std"], payload["input_size"],
                                 _classifier_name(model), payload.get("class_names"))
    teacher.grayscale = bool(payload.get("grayscale", False))
    return teacher


def _check_teacher_payload(path: str, payload: dict, own_weights: bool) -> None:
    """Every field of a teacher file has the type it must have (one line naming the file and the field)."""
    def bad(field: str, accepted: str) -> UserError:
        return UserError(f"teacher file '{path}' has a malformed '{field}' ({payload.get(field)!r:.60}); "
                         f"accepted: {accepted}")

    if not isinstance(payload.get("arch"), str):
        raise bad("arch", "a timm architecture name")
    if not isinstance(payload.get("arch_kwargs", {}), dict):
        raise bad("arch_kwargs", "a mapping of keyword arguments")
    payload.setdefault("arch_kwargs", {})
    state = payload.get("state_dict")
    if not own_weights and not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise bad("state_dict", "tensors by name")
    for field in ("mean", "std"):
        value = payload.get(field)
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad(field, "three numbers")
    size = payload.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise bad("input_size", "a positive whole number of pixels")
    names = payload.get("class_names")
    if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise bad("class_names", "a list of names, or none")


def hub_cached_download(url: str, alternative: str = WEIGHTS_OPTION) -> str:
    """A torch-hub-cached URL: the cached file, else a download into the cache. Offline it fails fast with one line
    naming the file, the path it belongs at, and `alternative` (the option that names a local file instead)."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if target.is_file():
        return str(target)
    _require_network(url, target.name, f"at {target}", alternative)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"could not download {url}: {first_line(exc)}; put the file at {target} "
                        f"or {alternative}") from None
    return str(target)


def _require_network(url: str, what: str, where: str, alternative: str = WEIGHTS_OPTION, offline: bool = False,
                     timeout: float = 5.0) -> None:
    """Fail fast with one line when the download host cannot be reached (DNS and connect, bounded in time)."""
    host = urlparse(url).hostname or url
    hint = f"cannot download {what}: {{}}; put it {where} or {alternative}"
    if offline:
        raise UserError(hint.format("offline mode (HF_HUB_OFFLINE) is set"))
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result.get("ok"):
        raise UserError(hint.format(f"{host} is unreachable"))
