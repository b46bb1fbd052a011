"""The pipeline's stages, one module each, in dvc.yaml's order.

Every module holds a pure function over typed inputs (agents, examples, estimators) and a thin
`run(...)` that reads and writes the paths dvc.yaml gives in the stage's `cmd`; the `amo` CLI
calls `run`. A stage's `deps` in dvc.yaml list exactly the amo modules its module imports
(tests/test_stage_deps.py derives that closure from the code).
"""
