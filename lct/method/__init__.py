"""The paper's method: schedules, losses, OT, preconditioning, objectives, samplers, the network."""
