"""``python -m mtqa``: the same as the ``mtqa`` command."""

from __future__ import annotations

__all__: list[str] = []

if __name__ == "__main__":
    from mtqa.cli import main

    main()
