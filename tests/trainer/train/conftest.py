"""The training workspace fixtures (`tests.support.train_workspace`) for the recipe's tests."""

from tests.support.train_workspace import workspace, workspace_template  # noqa: F401 (fixtures)
