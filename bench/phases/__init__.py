"""The benchmark phases, one module each, all working on a `Bench` (base.py):

- `single`: `direct`, `openssh`, `gateway` for each --sizes entry, and the tail latency
- `concurrency`: `concurrent`
- `small`: `small`
- `sessions`: `sessions`
- `workers`: `workers` (only when asked)
"""
