"""The control plane: see and steer a running organism over HTTP (``control:`` in organism.yaml).

Only `ControlConfig` is imported here: the server (`xml_pipeline.control.server`) needs the
``[web]`` extra (starlette, uvicorn) and is imported when an organism starts one.
"""

from xml_pipeline.control.settings import ControlConfig

__all__ = ["ControlConfig"]
