"""IIA and S4S under their former module name (public API); the code lives in :mod:`dode.learn`."""
from dode.learn.distances import FeatureDistance, get_distance, lpips_distance, mse_distance
from dode.learn.gits import fit_gits
from dode.learn.grids import MonotoneGrid, grid_of, sample_learned
from dode.learn.iia import FineTargets, fit_iia, step_errors
from dode.learn.ld3 import fit_ld3
from dode.learn.s4s import fit_s4s, s4s_form, teacher_samples
from dode.learn.s4s_alt import fit_s4s_alt

__all__ = [
    "fit_iia", "FineTargets", "step_errors",
    "fit_s4s", "fit_s4s_alt", "fit_ld3", "fit_gits", "s4s_form", "teacher_samples", "MonotoneGrid",
    "mse_distance", "FeatureDistance", "lpips_distance", "get_distance",
    "grid_of", "sample_learned",
]
