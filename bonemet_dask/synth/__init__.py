"""Synthetic BoneMet: the published folder layout and naming, drawn from an analytic phantom.

``generate(out, SynthConfig(...))`` writes ``Imagery_Dataset/1. Rotation-X-ray ... 5. ROI-CT``,
``MiceMediRec Dataset/record.csv`` and ``synthetic_truth.json`` (poses, Seg-CT boxes, lesion sizes,
junction slices, RoI change volumes).  Projections are exact cone-beam line integrals of the
phantom with Poisson noise; the image products are the same phantom voxelised.
"""

from bonemet_dask.synth.anatomy import LegAnatomy, hindlimb_phantom, leg_phantom
from bonemet_dask.synth.config import SIZES, SynthConfig
from bonemet_dask.synth.generate import THRESHOLD, TRUTH_FILE, generate, plan_mice
from bonemet_dask.synth.render import line_integrals, voxelize

__all__ = [
    "SIZES",
    "THRESHOLD",
    "TRUTH_FILE",
    "LegAnatomy",
    "SynthConfig",
    "generate",
    "hindlimb_phantom",
    "leg_phantom",
    "line_integrals",
    "plan_mice",
    "voxelize",
]
