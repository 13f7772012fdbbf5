"""Learned corrections of base solvers, fitted on one batch: D-ODE's λ, IIA, S4S and S4S-Alt."""
