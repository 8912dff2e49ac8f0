"""analytics.js's own client metrics (`POST {apiHost}/m`, so `/v1/m`): pure parsing.

analytics.js posts `{"series": [{"type": "Counter", "metric": "analytics_js.invoke",
"value": 1, "tags": {...}}, ...]}` there (`text/plain`, no write key) every 30 s while
its sampling is on, which it is at 100 % when the source's settings are given inline
without `metrics`: Segment's telemetry about its library, not data about anyone's users.
Inlet accepts them so that browsers log no failed request, counts them by metric name
(analytics.js's names only: nothing else from the payload becomes a label) and stores
nothing.
"""

from __future__ import annotations

from typing import Any, Final

from http_bridge.errors import BadRequest

PATH: Final = "/v1/m"

#: The metrics analytics.js sends (packages/browser/src/core/stats, browser/standalone.ts),
#: the only values of the `metric` label besides `other`.
NAMES: Final = (
    "analytics_js.invoke",
    "analytics_js.invoke.error",
    "analytics_js.integration.invoke",
    "analytics_js.integration.invoke.error",
)
OTHER: Final = "other"

#: analytics.js queues at most 20 entries of a few hundred bytes each between posts.
MAX_BYTES: Final = 16 * 1024


def counted(body: dict[str, Any]) -> list[str]:
    """The label of each entry of `series`: its metric name when it is one of `NAMES`,
    else `other`. Each entry counts one (analytics.js always sends `value: 1`; a
    larger value from anyone else is not believed).

    Raises:
        BadRequest: no `series` array, or an entry that is not an object with a
            `metric` string.
    """
    series = body.get("series")
    if series is None:
        raise BadRequest("the body has no `series` array", "missing_field")
    if not isinstance(series, list):
        raise BadRequest("`series` must be an array of metrics", "wrong_type")
    names: list[str] = []
    for index, entry in enumerate(series):
        metric = entry.get("metric") if isinstance(entry, dict) else None
        if not isinstance(metric, str):
            raise BadRequest(
                f"`series[{index}]` must be an object with a `metric` string", "wrong_type"
            )
        names.append(metric if metric in NAMES else OTHER)
    return names
