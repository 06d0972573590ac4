"""compare@<key>: one measured variant against another, paired, on the same test utterances.

    python stages/compare.py <key> <metrics-json> [<section>]

``<section>.<key>`` in params.yaml (section ``comparisons`` by default; the real-track pipelines use
``real_comparisons``) names ``variant`` and ``baseline``: keys of ``dense``, ``variants``,
``real_dense``, ``real_dense_synth`` or ``real_variants`` whose ``measure`` stages wrote
``reports/metrics/<name>.json`` and ``reports/hyps/<name>.jsonl`` (dvc.yaml lists them as deps).
Use it where the right baseline is not the dense reference: a compressed model against a control
with the same extra training, or two methods at a matched budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asrcompress.config import Spec, check_section, derive_seed, get, load_params
from asrcompress.io import log, read_json, read_jsonl, setup_logging, write_json
from asrcompress.measure.compare import compare_variants
from asrcompress.measure.suite import MEASURED_SECTIONS as MEASURED

SCHEMA = {"variant": Spec(str), "baseline": Spec(str)}


def _measured(cfg: dict, name: str, dotted: str, metrics_dir: Path) -> tuple[dict, list[dict]]:
    if not any(name in (cfg.get(s) or {}) for s in MEASURED):
        raise ValueError(f"params.yaml: {dotted}: {name!r} is not a key of {', '.join(MEASURED)}")
    hyps_path = metrics_dir.parent / "hyps" / f"{name}.jsonl"
    return read_json(metrics_dir / f"{name}.json"), read_jsonl(hyps_path)


def main(key: str, metrics_path: str, section: str = "comparisons") -> None:
    setup_logging()
    cfg = load_params()
    entry = check_section(get(cfg, f"{section}.{key}"), f"{section}.{key}", SCHEMA)
    metrics_dir = Path(metrics_path).parent
    variant, v_hyps = _measured(cfg, entry["variant"], f"{section}.{key}.variant", metrics_dir)
    baseline, b_hyps = _measured(cfg, entry["baseline"], f"{section}.{key}.baseline", metrics_dir)
    out = compare_variants(variant, v_hyps, baseline, b_hyps, get(cfg, "measure.bootstrap_resamples", int),
                           derive_seed(get(cfg, "seed", int), "compare", key),
                           names=(entry["variant"], entry["baseline"]))
    write_json(metrics_path, {"comparison": key, **entry, **out})
    def num(name: str) -> float:  # None (no paired figure) logs as nan; 0.0 stays 0
        return float("nan") if out[name] is None else out[name]

    log.info("compare@%s: %s vs %s: WER %+.2f pts [%.2f, %.2f], p(worse) %.3g", key, entry["variant"],
             entry["baseline"], out["wer_delta_abs"], num("wer_delta_ci_low_pct"), num("wer_delta_ci_high_pct"),
             num("p_value_worse"))


if __name__ == "__main__":
    main(*sys.argv[1:])
