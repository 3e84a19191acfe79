"""SSH host keys: no silent trust. First contact asks (or checks --expect-host-key); a change aborts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh

from dvic_core.files import write_private

from .errors import CannotAsk, InstallerError
from .models import ConfirmHostKey, HostKeyPrompt


def host_pattern(host: str, port: int) -> str:
    """The OpenSSH known_hosts name for a host and port."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


class KnownHosts:
    """The operator's confirmed host keys, in OpenSSH known_hosts format (plain names, no hashing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InstallerError(
                "connect", "known_hosts_unreadable", f"cannot read {self.path}: {exc}", "fix the file's permissions"
            ) from exc

    def keys_for(self, host: str, port: int) -> list[asyncssh.SSHKey]:
        """Keys confirmed for exactly this host and port. A bad line is an error, never skipped silently."""
        want = host_pattern(host, port)
        keys: list[asyncssh.SSHKey] = []
        for number, line in enumerate(self._lines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if want not in fields[0].split(","):
                continue
            try:
                keys.append(asyncssh.import_public_key(" ".join(fields[1:3])))
            except (asyncssh.KeyImportError, IndexError) as exc:
                raise InstallerError(
                    "connect",
                    "known_hosts_corrupt",
                    f"{self.path} line {number} for {want} is not a valid host key: {exc}",
                    f"fix or delete line {number} of {self.path}",
                ) from exc
        return keys

    def add(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        """Append a confirmed key (atomic rewrite; the dir is 0700, the file 0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = host_pattern(host, port) + " " + key.export_public_key("openssh").decode().strip()
        text = "\n".join(self._lines() + [line]) + "\n"
        write_private(self.path, text)


# As OpenSSH prints it: "SHA256:" and the unpadded base64 of a 32-byte digest (43 characters).
_PIN = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def check_pin(option: str, value: str) -> str:
    """A ``--expect-host-key`` style pin, checked before anything connects ("" means none given).

    Raises ValueError naming ``option`` when the value is not ``SHA256:`` + 43 base64 characters.
    """
    pin = value.strip().rstrip("=")
    if not pin:
        return ""
    if not _PIN.fullmatch(pin):
        raise ValueError(
            f"{option} {value!r} is not a SHA256 fingerprint: expected SHA256: and 43 base64 characters, "
            "as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it on the machine"
        )
    return pin


async def trusted_host_keys(
    store: KnownHosts,
    *,
    role: str,
    host: str,
    port: int,
    expected: str,
    confirm: ConfirmHostKey | None,
    tunnel: Any,
    connect_timeout: float,
) -> list[asyncssh.SSHKey]:
    """Return the keys to pass as asyncssh's ``known_hosts`` for this host, asking when first seen.

    The key shown to the operator is fetched with a separate key exchange; the real connection is
    then made trusting only the confirmed key, so a key swapped in between is still refused.
    """
    try:
        pin = check_pin(_PIN_OPTION[role], expected)
    except ValueError as exc:
        raise InstallerError("connect", "bad_pin", str(exc), f"fix {_PIN_OPTION[role]}") from exc
    known = store.keys_for(host, port)
    algs: Sequence[str] = [alg.decode() for key in known for alg in key.sig_algorithms] if known else ()
    options: dict[str, Any] = {"config": None}
    if tunnel is not None:
        options["tunnel"] = tunnel
    if algs:
        options["server_host_key_algs"] = algs
    try:
        presented = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, **options), connect_timeout)
    except (asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost, ConnectionResetError, BrokenPipeError):
        if not known:
            raise
        # Asked only for the confirmed key's type, the server refused (OpenSSH just disconnects):
        # look at what it offers now; any key at all is a change.
        options.pop("server_host_key_algs", None)
        presented = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, **options), connect_timeout)
    if presented is None:
        raise InstallerError("connect", "no_host_key", f"{role} {host}:{port} presented no host key")
    shown = fingerprint(presented)
    who = f"{role} host {host_pattern(host, port)}"

    if pin and pin != shown:  # a pin given for this run is always checked, whatever known_hosts holds
        raise InstallerError(
            "connect",
            "host_key_mismatch",
            f"{who} presents {shown}, not the expected {pin}",
            "check the fingerprint on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)",
        )
    if known:
        if any(k.public_data == presented.public_data for k in known):
            return known
        stored = ", ".join(fingerprint(k) for k in known)
        raise InstallerError(
            "connect",
            "host_key_changed",
            f"HOST KEY CHANGED for {who}: it now presents {shown}, but {stored} was confirmed before. "
            "Someone may be intercepting the connection, or the machine was reinstalled.",
            f"verify the new key on the machine itself (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub); if it is "
            f"legitimate, delete the {host_pattern(host, port)} line from {store.path} and run again",
        )

    if not pin:
        if confirm is None:
            raise _not_known(role, who, shown, "")
        prompt = HostKeyPrompt(role, host, port, presented.get_algorithm(), shown)
        try:
            confirmed = await confirm(prompt)
        except CannotAsk as exc:
            raise _not_known(role, who, shown, str(exc)) from exc
        if not confirmed:
            raise InstallerError(
                "connect", "host_key_rejected", f"the {who} key {shown} was not confirmed",
                f"check the key on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run again "
                f"and confirm it, or pass {_PIN_OPTION[role]}",
            )
    store.add(host, port, presented)
    return [presented]


_PIN_OPTION = {"target": "--expect-host-key", "jump": "--expect-jump-host-key"}


def _not_known(role: str, who: str, shown: str, why: str) -> InstallerError:
    """First contact that nobody confirmed: say which option carries the fingerprint instead."""
    return InstallerError(
        "connect",
        "host_key_unknown",
        f"{who} is not known yet; it presents {shown}" + (f" ({why})" if why else ""),
        f"check that fingerprint on the {'machine' if role == 'target' else 'jump host'} "
        f"(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then pass {_PIN_OPTION[role]} {shown}",
    )
