"""What to run on and what it costs, one job per module:
  plan     will a run fit, how long, at what price, on which GPU: estimates before any GPU time
  prices   the offers (SkyPilot's catalogs, the bundled snapshot, or a flat price) and a running job's price
  cost     GPU-hours and dollars of a run, accumulated live and across restarts
  launch   a SkyPilot task as a managed spot job, or its run section on this machine
  spot_fallback  watch a managed spot job; past compute.max_preemptions, the rest on-demand
  skytask  checks of sky/*.yaml, SkyPilot's own parser, finding SkyPilot's separate environment
  sweep    many variants of params.yaml for one budget, launched, watched and compared

Imports: model (the shape facts: FLOPs, attention, loss chunks, offload tile), config, tracking.
Never train: a plan is made before any training code runs.
"""
