"""Learned corrections of base solvers, fitted on one batch: D-ODE's λ, IIA, S4S, S4S-Alt, LD3, GITS,
AMED-Plugin and PAS.

Each is a base solver of :mod:`dode.core.solvers` plus per-evaluation numbers θ_k that enter through
the one hook :meth:`dode.core.path.ModelPath.correct` as a :class:`~dode.core.forms.Correction`: at
model evaluation k the solver's x0 estimate d_k becomes ``d̃_k = d_k + Σ_m θ_{k,m} g_{k,m}`` (θ = 0 is
the base solver bit for bit; the features g are those of the form, :mod:`dode.core.forms`). Notation:
VE state x at noise level σ, ε = (x − d)/σ. Every fit records ``fit_seconds`` (and
``teacher_seconds``) in the provenance and shows a tqdm bar with ``progress=True``.

``record`` traces and replays the solver, ``dode`` fits D-ODE's λ (and its appendix forms) in closed
form against a finer teacher (``authors``: against the D-ODE authors' code's teacher targets), ``iia`` fits IIA against fine sub-steps, ``s4s`` / ``s4s_alt`` optimise
S4S's coefficients (and grid) against a teacher's samples with ``distances`` (plain, or ``relaxed``:
LD3's objective), ``ld3`` learns only the grid, ``gits`` chooses it by dynamic programming, ``amed``
(AMED-Plugin) an inserted time and a direction scale per step, ``pas`` searches PAS's few PCA
coordinates step by step against a teacher, keeping only the steps where they help; ``grids`` holds
the learned-grid parametrisation and samples a fit on its grid.
"""
from dode.learn.amed import fit_amed
from dode.learn.authors import fit_authors
from dode.learn.dode import fit_correction, fit_lambdas, teacher_states
from dode.learn.gits import fit_gits
from dode.learn.grids import grid_of, sample_learned
from dode.learn.iia import fit_iia
from dode.learn.ld3 import fit_ld3
from dode.learn.pas import fit_pas
from dode.learn.record import student_points
from dode.learn.s4s import fit_s4s
from dode.learn.s4s_alt import fit_s4s_alt

__all__ = ["fit_amed", "fit_authors", "fit_correction", "fit_lambdas", "student_points", "teacher_states", "fit_iia",
           "fit_gits", "fit_ld3", "fit_pas", "fit_s4s", "fit_s4s_alt",
           "grid_of", "sample_learned"]
