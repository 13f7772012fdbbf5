"""Learned corrections of base solvers, fitted on one batch: D-ODE's λ, IIA, S4S and S4S-Alt."""
from dode.learn.dode import fit_correction, fit_lambdas, student_points, teacher_states
from dode.learn.learned import fit_iia, fit_s4s, fit_s4s_alt, grid_of, sample_learned

__all__ = ["fit_correction", "fit_lambdas", "student_points", "teacher_states", "fit_iia", "fit_s4s", "fit_s4s_alt",
           "grid_of", "sample_learned"]
