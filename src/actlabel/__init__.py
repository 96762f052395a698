"""actlabel: labelled datasets at a fraction of the human cost, by the ACT method."""

from actlabel.errors import NotAProject, ProjectBusy, UserError
from actlabel.frame import label
from actlabel.project import Project
from actlabel.task import Example, Label, Task

__all__ = ["Example", "Label", "NotAProject", "Project", "ProjectBusy", "Task", "UserError", "label"]
__version__ = "0.1.0"
