"""Deprecated location: the marker task now lives in `trl_rfm.testing.marker_task`."""

import warnings

from .testing.marker_task import *  # noqa: F401,F403


warnings.warn(
    "`trl_rfm.marker_task` is deprecated; import from `trl_rfm.testing` instead.", DeprecationWarning, stacklevel=2
)
