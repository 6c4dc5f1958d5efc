"""The one error type for bad input: it names the file, the field and what is wrong."""

from __future__ import annotations

import re

# Characters that end a line (str.splitlines) or move the cursor: shown escaped, so a
# key or value holding them cannot break the one-line message.
_BREAKS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: object) -> str:
    return _BREAKS.sub(lambda m: repr(m.group())[1:-1], str(text))


class SpecError(ValueError):
    """A spec file, a name or an option value is invalid.

    ``str(err)`` is one line: ``<where>: <field>: <what is wrong>``; the CLI prints it
    and exits with status 2.
    """

    def __init__(self, where: str, field: str, problem: str):
        self.where = one_line(where)
        self.field = one_line(field)
        self.problem = one_line(problem)
        parts = (self.where, self.field, self.problem) if self.field else (self.where, self.problem)
        super().__init__(": ".join(parts))
