"""The injection corpus (tests/data/sql_injection_payloads.txt), for the unit and integration tests.

Importable as ``sql_corpus`` from both suites: pytest puts ``tests/`` on the path
(it is no package).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "sql_injection_payloads.txt"
FLAVOURS = ("pg", "mysql", "sqlite")
#: the string-built queries the payloads are pasted into
TEMPLATES = {
    "string": "SELECT id, name FROM users WHERE name = '{}' AND active = 1",
    "number": "SELECT id, name FROM users WHERE id = {} ORDER BY id",
}
#: the same queries with harmless values: what an allow-list learns
LEGIT = {"string": TEMPLATES["string"].format("alice"), "number": TEMPLATES["number"].format(42)}


@dataclass(frozen=True)
class Payload:
    expect: str  # "rule" | "allowlist"
    context: str  # "string" | "number"
    flavours: tuple[str, ...]
    text: str

    def statement(self, table: str = "users") -> str:
        return TEMPLATES[self.context].format(self.text).replace("FROM users", f"FROM {table}")

    def __str__(self) -> str:
        return f"{self.expect}:{self.context}:{self.text}"


def load_corpus() -> list[Payload]:
    out = []
    for line in CORPUS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        expect, context, flavours, text = line.split(" ", 3)
        assert expect in ("rule", "allowlist") and context in TEMPLATES, line
        out.append(
            Payload(expect, context, FLAVOURS if flavours == "all" else tuple(flavours.split(",")), text)
        )
    return out


PAYLOADS = load_corpus()
