"""Class-subset tasks: a 10-bit code over a 10-class task's classes makes a binary task.

Bit ``i`` of the code is class ``i``: classes whose bit is 1 form the positive
class (label 1), the rest the negative class (label 0). This is RPG's unseen-task
setting; the code is stored as the task's condition.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .base import Task


class TaskCodeError(ValueError):
    """A class-subset code that cannot define a binary task."""


def parse_code(code: str | list[int] | tuple[int, ...], num_classes: int) -> str:
    """Validate a code given as a bit string ('0100100001') and return it as one."""
    if isinstance(code, (list, tuple)):
        code = "".join(str(int(b)) for b in code)
    code = str(code).strip()
    if len(code) != num_classes or set(code) - {"0", "1"}:
        raise TaskCodeError(f"task code '{code}' must be {num_classes} characters of 0 and 1")
    if code in ("0" * num_classes, "1" * num_classes):
        raise TaskCodeError(f"task code '{code}' is all {code[0]}s: one class would be empty")
    return code


def code_from_classes(classes: list[int], num_classes: int) -> str:
    """The code whose positive classes are ``classes`` (e.g. [1, 4, 9] -> '0100100001')."""
    for c in classes:
        if not 0 <= int(c) < num_classes:
            raise TaskCodeError(f"class {c} is out of range 0..{num_classes - 1}")
    bits = ["1" if i in {int(c) for c in classes} else "0" for i in range(num_classes)]
    return parse_code("".join(bits), num_classes)


def all_codes(num_classes: int = 10) -> list[str]:
    """Every valid code: 2**num_classes - 2 of them (1022 for 10 classes), in numeric order."""
    return [format(i, f"0{num_classes}b")[::-1] for i in range(1, 2**num_classes - 1)]


def code_bits(code: str) -> torch.Tensor:
    """The code as a float tensor of 0/1, the form a generator is conditioned on."""
    return torch.tensor([float(b) for b in code])


def binary_subset(task: Task, code: str) -> Task:
    """``task`` relabelled by ``code``: the same inputs, label 1 for the classes whose bit is 1."""
    if task.kind != "classification":
        raise TaskCodeError(f"task '{task.name}' is a {task.kind} task: class-subset codes need class labels")
    code = parse_code(code, task.num_classes)
    positive = torch.tensor([b == "1" for b in code])

    def relabel(y: torch.Tensor) -> torch.Tensor:
        return positive[y].long()

    return replace(
        task,
        name=f"{task.name}[{code}]",
        y_train=relabel(task.y_train),
        y_val=relabel(task.y_val),
        y_test=relabel(task.y_test),
        num_classes=2,
        condition={**task.condition, "code": code},
    )
