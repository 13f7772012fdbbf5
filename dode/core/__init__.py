"""The numerical core: noise schedules and σ grids, denoisers, correction forms, the one model-call
path, the base ODE solvers and sampling. Nothing here knows about files, configs or runs."""
