"""Model zoos: checkpoints with metrics and conditions, built resumably, read lazily."""
from .build import build_zoo, plan_runs
from .external import CheckpointError
from .importer import import_checkpoints
from .recorder import Recorder
from .store import Member, Zoo, ZooCorruptError, ZooError, ZooWriter

__all__ = ["Zoo", "ZooWriter", "Member", "ZooError", "ZooCorruptError", "build_zoo", "plan_runs",
           "Recorder", "import_checkpoints", "CheckpointError"]
