"""Chat templates shipped with isvc."""

from __future__ import annotations

import logging
from functools import cache
from importlib.resources import files

logger = logging.getLogger(__name__)


@cache
def tool_template() -> str:
    """The tool-capable ChatML template (Hermes format): used, with a log line the first time, when a
    request carries tools or tool turns and the model's own template does not render them."""
    logger.info(
        "the model's chat template does not render tools: using isvc's tool ChatML template "
        "(isvc/server/protocols/templates/tool_chatml.jinja; --tool-call-parser hermes reads its calls)"
    )
    return files(__package__).joinpath("tool_chatml.jinja").read_text()
