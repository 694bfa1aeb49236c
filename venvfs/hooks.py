"""Placeholder: activation and interpreter-start hooks (automount) are being written."""

from __future__ import annotations

from venvfs.venv import Venv


def install(venv: Venv) -> None:
    return None


def uninstall(venv: Venv) -> None:
    return None
