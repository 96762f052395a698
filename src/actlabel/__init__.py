"""actlabel: labelled datasets at a fraction of the human cost, by the ACT method."""

from typing import TYPE_CHECKING, Any

from actlabel.errors import NotAProject, ProjectBusy, UserError
from actlabel.task import Example, Label, Task

if TYPE_CHECKING:
    from actlabel.frame import label
    from actlabel.project import Project

__all__ = ["Example", "Label", "NotAProject", "Project", "ProjectBusy", "Task", "UserError", "label"]
__version__ = "0.1.0"

# Imported on first use (PEP 562): the DataFrame API pulls in pyarrow and the project every stage,
# and a CLI start, which imports this package first, needs neither.
_LAZY = {"label": "actlabel.frame", "Project": "actlabel.project"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'actlabel' has no attribute {name!r}")
