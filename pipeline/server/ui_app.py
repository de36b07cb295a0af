"""The MLflow UI as our users want it: the model-training view, and the runs table showing the
columns a continual-learning run is compared by.

MLflow 3.17 opens every experiment on its GenAI pages (traces, token usage) unless the URL
carries ``?workflowType=machine_learning`` or the browser remembers the sidebar's "Model
training" switch (localStorage key ``mlflow.workflowType_v1``); an experiment tag
(``mlflow.experimentKind``) is ignored since the switch exists, and there is no server setting.
Its runs table shows no metric column until a user picks some; the pick is kept per browser and
experiment (``MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState``).

So every link the pipeline prints carries the URL parameter
(:meth:`pipeline.store.Store.ui_url`), and ``make ui`` / ``make server`` serve MLflow's own
app under this MLflow app plugin (entry point ``mlflow.app`` ``pipeline``, that is
``mlflow server --app-name pipeline``): it answers MLflow's page with one script added that
seeds, where the browser has no choice of its own yet, the model-training view, the GenAI
assistant's panel closed (it opens itself on a first visit, over the table) and, per
experiment the pipeline wrote, the columns named in the experiment's tag :data:`COLUMNS_TAG`
(which the runner writes). What a user picks later wins. Everything else is MLflow's app,
untouched. Why our own code: MLflow offers no setting for either default.

The keys and the state's shape are MLflow 3.17's (its ``static/js`` bundle); ``make test-ui``
checks in Chromium that the view and the columns appear, so a change in MLflow shows there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORKFLOW_KEY = "mlflow.workflowType_v1"
# MLflow's GenAI assistant opens itself on a browser's first visit, over half the runs table;
# marked as opened once, it stays a button.
ASSISTANT_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
VIEW_KEY = "MLflowLocalStorage-1.1-ExperimentPage-{ids}-ReactComponentState"
TRAINING_VIEW = "machine_learning"
# Experiment tag: JSON list of the runs table's columns. MLflow's lists hide tags named
# "mlflow.*" (its UI's isUserFacingTag), so the list of experiments does not show the raw JSON.
COLUMNS_TAG = "mlflow.pipeline.columns"
LEGACY_COLUMNS_TAG = "pipeline.columns"  # its name until 2026-12, shown raw: removed on sight
# MLflow's attribute columns we show first: who ran it, from what command, at which commit.
ATTRIBUTE_COLUMNS = ["attributes.`User`", "attributes.`Source`", "attributes.`Version`"]

_SCRIPT = """<script>(function (seed) {
  try {
    Object.keys(seed.defaults).forEach(function (key) {
      if (!localStorage.getItem(key))
        localStorage.setItem(key, JSON.stringify(seed.defaults[key]));
    });
    Object.keys(seed.views).forEach(function (id) {
      var key = seed.viewKey.replace("{ids}", JSON.stringify([id]));
      if (!localStorage.getItem(key))
        localStorage.setItem(key, JSON.stringify({selectedColumns: seed.views[id]}));
    });
  } catch (e) {}
})(%s);</script>"""


def seed_script(views: dict[str, list[str]]) -> str:
    """The ``<script>`` that seeds the browser's defaults.

    Args:
        views: per experiment id, the runs table's columns (MLflow's keys, such as
            ``metrics.`test/bwt```).
    """
    seed = {
        "defaults": {WORKFLOW_KEY: TRAINING_VIEW, ASSISTANT_KEY: True},
        "viewKey": VIEW_KEY,
        "views": views,
    }
    # </ never appears in JSON of ours unescaped: "/" is escaped so a tag cannot end the script.
    return _SCRIPT % json.dumps(seed).replace("/", "\\/")


def seeded_page(index_html: str, views: dict[str, list[str]]) -> str:
    """MLflow's ``index.html`` with :func:`seed_script` run before its own scripts."""
    head = index_html.find("<head>")
    at = head + len("<head>") if head >= 0 else 0
    return index_html[:at] + seed_script(views) + index_html[at:]


def experiment_views() -> dict[str, list[str]]:
    """Per experiment the pipeline wrote (it has :data:`COLUMNS_TAG`), its table's columns."""
    from mlflow.server.handlers import _get_tracking_store

    views: dict[str, list[str]] = {}
    for exp in _get_tracking_store().search_experiments(max_results=1000):
        if columns := exp.tags.get(COLUMNS_TAG):
            views[str(exp.experiment_id)] = ATTRIBUTE_COLUMNS + json.loads(columns)
    return views


def create_app() -> Any:
    """MLflow's ASGI app, its page served seeded (the factory ``mlflow server`` runs)."""
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app as mlflow_app
    from starlette.responses import HTMLResponse

    index = Path(str(flask_app.static_folder)) / "index.html"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/":
            try:
                page = seeded_page(index.read_text(), experiment_views())
            except Exception:  # the store unreadable now: MLflow's page, unseeded
                await mlflow_app(scope, receive, send)
                return
            await HTMLResponse(page)(scope, receive, send)
            return
        await mlflow_app(scope, receive, send)

    return app
