"""The metric suites of `lct evaluate` / `lct ref-stats`, torch-free (the report reads them in the light env)."""

from __future__ import annotations

from typing import Any

# --feature -> which extractors give the Frechet distances (per mode) and which gives Recall.
SUITES: dict[str, dict[str, Any]] = {
    "inception": {
        "fd": {"legacy_pytorch": "inception_legacy", "clean": "inception_clean"},
        "recall": "vgg16_nvidia",  # StyleGAN2-ADA pr50k3_full (lct.evaluation.metrics.PR50K3); "vgg16" = torchvision fallback
        "metric_name": "FID",
    },
    "digit_classifier": {
        "fd": {"frechet_digit": "digit_classifier"},
        "recall": "digit_classifier",
        "metric_name": "FD-digit",
    },
}
