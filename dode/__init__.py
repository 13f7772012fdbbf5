"""dode: learned few-step ODE solvers of diffusion models (D-ODE, IIA, S4S) on one model-call path."""
__version__ = "0.1.0"
