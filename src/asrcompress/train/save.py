"""Writing a trained Whisper: the `save_pretrained` directory and its metrics, from one process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from accelerate import PartialState

from asrcompress.io import write_json


def save_trained(model: torch.nn.Module, processor: Any, out_dir: str, metrics_path: str,
                 summary: Mapping[str, Any], **extra: Any) -> int | None:
    """Save ``model`` and ``processor`` to ``out_dir`` (``from_pretrained`` reloads it) and write
    ``summary`` + ``extra`` + the parameter count to ``metrics_path``.

    With several launched processes only the main one writes; every process waits until the files are
    complete. Returns the parameter count on the main process, ``None`` on the others.
    """
    state = PartialState()
    n_params = None
    if state.is_main_process:
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        n_params = sum(p.numel() for p in model.parameters())
        write_json(metrics_path, {**summary, **extra, "params": n_params})
    state.wait_for_everyone()
    return n_params
