"""Workflow stages, one plug-in module each: `pipeline/stages/NAME.py` registers the stage NAME with
`pipeline.engine.registry.stage`; only the registry imports them."""
