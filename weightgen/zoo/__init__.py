"""Model zoos: checkpoints with metrics and conditions, built resumably, read lazily."""
from .build import build_zoo, plan_runs
from .store import Member, Zoo, ZooCorruptError, ZooError, ZooWriter

__all__ = ["Zoo", "ZooWriter", "Member", "ZooError", "ZooCorruptError", "build_zoo", "plan_runs"]
