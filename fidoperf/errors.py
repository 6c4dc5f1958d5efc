"""The one error type for bad input: it names the file, the field and what is wrong."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec file, a name or an option value is invalid.

    ``str(err)`` is one line: ``<where>: <field>: <what is wrong>``; the CLI prints it
    and exits with status 2.
    """

    def __init__(self, where: str, field: str, problem: str):
        self.where = str(where)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.where}: {field}: {problem}" if field else f"{self.where}: {problem}")
