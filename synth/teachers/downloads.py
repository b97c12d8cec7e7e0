"""Pretrained weights from the torch hub or Hugging Face caches, else downloaded; offline, a download fails fast
with one line naming the file, where it belongs and the option that names a local file instead."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from synth.common.errors import UserError, first_line

WEIGHTS_OPTION = "pass the weights file with --teacher-weights"


def hub_cached_download(url: str, alternative: str = WEIGHTS_OPTION) -> str:
    """A torch-hub-cached URL: the cached file, else a download into the cache. Offline it fails fast with one line
    naming the file, the path it belongs at, and `alternative` (the option that names a local file instead)."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if target.is_file():
        return str(target)
    require_network(url, target.name, f"at {target}", alternative)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(
            f"could not download {url}: {first_line(exc)}; put the file at {target} or {alternative}"
        ) from None
    return str(target)


def timm_weights_file(name: str, cfg: Any) -> str:
    """Resolve timm weights: the Hugging Face cache, else a download (failing fast offline)."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if cfg is None or not (hub_id or getattr(cfg, "url", None)):
        raise UserError(f"timm model '{name}' has no pretrained weights; pass --teacher-weights FILE")
    if hub_id:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        filenames = (
            [cfg.hf_hub_filename]
            if getattr(cfg, "hf_hub_filename", None)
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in filenames:
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return cached
        where = f"{hub_id}/{filenames[0]}"
        require_network(
            constants.ENDPOINT,
            where,
            f"in the Hugging Face cache ({constants.HF_HUB_CACHE})",
            offline=constants.HF_HUB_OFFLINE,
        )
        try:
            return hf_hub_download(hub_id, filenames[0])
        except Exception as exc:  # noqa: BLE001 - any download failure is reported the same way
            raise UserError(
                f"could not download {where}: {first_line(exc)}; pass --teacher-weights FILE instead"
            ) from None
    return hub_cached_download(cfg.url)


def require_network(
    url: str, what: str, where: str, alternative: str = WEIGHTS_OPTION, offline: bool = False, timeout: float = 5.0
) -> None:
    """Fail fast with one line when the download host cannot be reached (DNS and connect to the URL's port, bounded
    in time)."""
    parsed = urlparse(url)
    host, port = parsed.hostname or url, parsed.port or (80 if parsed.scheme == "http" else 443)
    hint = f"cannot download {what}: {{}}; put it {where} or {alternative}"
    if offline:
        raise UserError(hint.format("offline mode (HF_HUB_OFFLINE) is set"))
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result.get("ok"):
        raise UserError(hint.format(f"{host} is unreachable"))
