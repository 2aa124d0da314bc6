"""The paper's method: schedules, curriculum, losses, OT, preconditioning, objectives, samplers, the network."""
