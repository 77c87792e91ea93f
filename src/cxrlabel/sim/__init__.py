"""Crowd simulator: personas answer real X-rays through the real assignment and quality engines.

Entry points: ``cxrlabel.sim.run.simulate_into`` (fill an existing job, used by the demo),
``cxrlabel.sim.run.run_simulation`` (a complete simulated job), ``cxrlabel.sim.sweep`` (job-design
sweep), ``cxrlabel.sim.http_driver`` (many concurrent annotators against a running server),
``cxrlabel.sim.http_attack`` (gold-harvesting accounts and a cheater, over HTTP).
See docs/simulation.md.
"""
