"""Runs the real `dvic` command (`python -m tui`) as a subprocess for the CLI tests."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run_dvic(env: dict[str, str], *args: str, stdin: bytes | None = None, limit: float = 30) -> Result:
    """Runs the real `dvic` command (`python -m tui`) as a subprocess."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tui", *args, env=env, cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    return Result(proc.returncode or 0, out.decode(), err.decode())
