"""The add-node form: enroll a machine and install its daemon over SSH, step by step (installer API).

The password is read from the form once, handed to the installer as a wipeable `Password` and the
input is cleared at once; nothing keeps it. Host keys seen for the first time are shown to the
operator to confirm, like `dvic add-node` does on a terminal.

Demos and the shell user are the command line's `--demo NAME=UNIT`, `--demo-cmd NAME=COMMAND` and
`--shell-user USER` (docs/add-node.md), checked by the installer's own parsers before anything
connects; no demo given keeps the node's demos.json, as on the command line.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, Select, Static, TextArea

from dvic_core.constants import NODE_KINDS
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ConfirmDialog
from tui.textsafe import literal

STEPS = ("connect", "check", "enroll", "render", "install", "online")
# ESP32 boards get a header file: `dvic add-node --kind esp32`.
KINDS = tuple(kind for kind in NODE_KINDS if kind != "esp32")
MARK = {"pending": ("○", "dim"), "running": ("◌", "yellow"), "ok": ("✔", "green"),
        "skipped": ("–", "dim"), "failed": ("✖", "bold red")}


def parse_jump(value: str) -> tuple[str, str, int]:
    """`USER@HOST[:PORT]` (or `[v6]:PORT`) -> (user, host, port)."""
    user, _, hostport = value.strip().rpartition("@")
    host, raw = hostport, "22"
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        raw = rest[1:] if rest.startswith(":") else "22"
    elif hostport.count(":") == 1:
        host, _, raw = hostport.partition(":")
    if not host:
        raise ValueError("jump host: expected USER@HOST[:PORT]")
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"jump host: port must be a number from 1 to 65535, not {raw!r}")
    return user, host, int(raw)


class AddNodeScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+s", "install", "Install"),
    ]

    def __init__(self) -> None:
        super().__init__(id="add-node")
        self.running = False
        self.result: Any = None
        self.error: Any = None
        self.request: Any = None

    def body(self) -> ComposeResult:
        yield Static(Text("Add a node: enroll it and install its daemon over SSH", style="bold"), id="add-title")
        with VerticalScroll(id="add-form"):
            with Horizontal(classes="form-row"):
                yield Label("Target", classes="form-label")
                yield Input(placeholder="IP address or host name", id="host", compact=True)
                yield Input(value="22", placeholder="port", id="port", type="integer", max_length=5, compact=True)
            with Horizontal(classes="form-row"):
                yield Label("SSH user", classes="form-label")
                yield Input(placeholder="root, or a sudo user", id="user", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Password", classes="form-label")
                yield Input(password=True, placeholder="used once, never stored", id="password", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Name", classes="form-label")
                yield Input(placeholder="default: the target's hostname", id="name", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Kind", classes="form-label")
                yield Select([(k, k) for k in KINDS], value="desktop", allow_blank=False, id="kind", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Group", classes="form-label")
                yield Input(placeholder="e.g. a room (optional)", id="group", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Via", classes="form-label")
                yield Input(placeholder="jump host USER@HOST[:PORT] (optional; default: direct)", id="jump", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Demos", classes="form-label")
                yield Input(placeholder="NAME=UNIT ... systemd units, space-separated (optional)", id="demos",
                            compact=True)
            with Horizontal(classes="form-row", id="demo-cmds-row"):
                yield Label("Commands", classes="form-label")
                yield TextArea(placeholder="NAME=COMMAND, one demo a line, stopped by a signal (optional)",
                               id="demo-cmds", compact=True, soft_wrap=False, show_cursor=True,
                               highlight_cursor_line=False)
            with Horizontal(classes="form-row"):
                yield Label("Shell user", classes="form-label")
                yield Input(placeholder="user of remote shells (default root; must exist on the target)",
                            id="shell-user", compact=True)
            yield Button("Install (ctrl+s)", id="install", variant="primary", compact=True)
            steps: DataTable[Any] = DataTable(id="steps", cursor_type="none")
            steps.add_column("", key="mark", width=2)
            steps.add_column("Step", key="step", width=8)
            steps.add_column("Time", key="time", width=7)
            steps.add_column("", key="message")
            yield steps
            yield Static(id="add-result")

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#steps", DataTable)
        for name in STEPS:
            mark, style = MARK["pending"]
            table.add_row(Text(mark, style=style), Text(name), Text(""), Text(""), key=name)
        self.query_one("#host", Input).focus()

    # -- form ----------------------------------------------------------------------------------
    def _value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    def _say(self, text: Text) -> None:
        result = self.query_one("#add-result", Static)
        result.update(text)
        self.call_after_refresh(result.scroll_visible, animate=False)

    def _demos(self) -> tuple[Any, str]:
        """(demos or None to keep the node's demos.json, shell user), or ValueError naming the field."""
        from installer.demos import DemoError, check_demos, check_shell_user, parse_demo, parse_demo_cmd

        def field_error(label: str, exc: DemoError) -> ValueError:
            message = str(exc)
            for option in ("--demo-cmd ", "--demo ", "--shell-user "):
                message = message.removeprefix(option)
            return ValueError(f"{label}: {message}")

        demos = []
        try:
            demos += [parse_demo(v) for v in self._value("demos").replace(",", " ").split()]
        except DemoError as exc:
            raise field_error("Demos", exc) from None
        lines = self.query_one("#demo-cmds", TextArea).text.splitlines()
        try:
            demos += [parse_demo_cmd(line.strip()) for line in lines if line.strip()]
        except DemoError as exc:
            raise field_error("Commands", exc) from None
        try:
            check_demos(demos)
        except DemoError as exc:
            raise field_error("Demos", exc) from None
        try:
            shell_user = check_shell_user(self._value("shell-user"))
        except DemoError as exc:
            raise field_error("Shell user", exc) from None
        return demos or None, shell_user

    def _request(self) -> Any:
        """Builds the installer request from the form, or raises ValueError saying what is wrong."""
        from installer import AddNodeRequest, Direct, Jump, Password, ServerSpec

        demos, shell_user = self._demos()  # before the password is taken: a typo costs no retyping
        host, user = self._value("host"), self._value("user")
        if not host:
            raise ValueError("Target: give the machine's IP address or host name")
        if not user:
            raise ValueError("SSH user: give a user that is root or may use sudo")
        try:
            port = int(self._value("port") or "22")
        except ValueError:
            raise ValueError("port: a number from 1 to 65535") from None
        if not 1 <= port <= 65535:
            raise ValueError("port: a number from 1 to 65535")
        box = self.query_one("#password", Input)
        if not box.value:
            raise ValueError("Password: the SSH password of that user (used once, never stored)")
        password = Password(bytearray(box.value.encode()))
        box.value = ""  # the form must not keep it either
        source: Any = Direct()
        if self._value("jump"):
            jump_user, jump_host, jump_port = parse_jump(self._value("jump"))
            source = Jump(host=jump_host, port=jump_port, user=jump_user)
        settings = self.dvic.settings
        return AddNodeRequest(
            host=host, user=user, password=password, port=port, source=source,
            server=ServerSpec(url=settings.server, token=settings.token or "", ca_path=settings.ca or ""),
            name=self._value("name"), kind=str(self.query_one("#kind", Select).value),
            group=self._value("group"), confirm_host_key=self._confirm_host_key,
            demos=demos, shell_user=shell_user,
        )

    async def _confirm_host_key(self, prompt: Any) -> bool:
        question = (f"First connection to the {prompt.role} {prompt.host}:{prompt.port}.\n"
                    f"Its {prompt.key_type} host key is {prompt.fingerprint}.\n"
                    "Trust it? Compare with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on that machine.")
        trusted: bool = await self.app.push_screen_wait(ConfirmDialog(question, "Trust"))
        return trusted

    def _progress(self, step: Any) -> None:
        table = self.query_one("#steps", DataTable)
        if step.name not in STEPS:
            return
        mark, style = MARK.get(str(step.status.value), ("?", ""))
        table.update_cell(step.name, "mark", Text(mark, style=style))
        if str(step.status.value) != "running":
            table.update_cell(step.name, "time", Text(f"{step.duration:.1f}s", style="dim"))
        table.update_cell(step.name, "message", literal(step.message or step.error or "", style=style),
                          update_width=True)

    # -- actions -------------------------------------------------------------------------------
    @on(Button.Pressed, "#install")
    def _pressed(self) -> None:
        self.action_install()

    def action_install(self) -> None:
        if self.running:
            return
        try:
            import installer  # noqa: F401 - only to say clearly when it is missing
        except ImportError:
            self._say(Text("The installer is not installed with this console.", style="bold red"))
            return
        try:
            request = self._request()
        except ValueError as exc:
            self._say(literal(f"✖ {exc}", style="bold red"))
            return
        self.request = request  # what the installer was given (without the password, wiped after use)
        self.run_install(request)

    @work(exclusive=True, group="add-node")
    async def run_install(self, request: Any) -> None:
        from installer import InstallerError, add_node

        self.running = True
        self.result = self.error = None
        self.query_one("#install", Button).disabled = True
        table = self.query_one("#steps", DataTable)
        for name in STEPS:
            mark, style = MARK["pending"]
            table.update_cell(name, "mark", Text(mark, style=style))
            table.update_cell(name, "time", Text(""))
            table.update_cell(name, "message", Text(""))
        self._say(Text("Installing…", style="yellow"))
        try:
            self.result = await add_node(request, progress=self._progress)
        except InstallerError as exc:
            self.error = exc
            text = literal(f"✖ {exc.step}: {exc.message}", style="bold red")
            if exc.hint:
                text.append("\n")
                text.append_text(literal(f"what to do: {exc.hint}", style="yellow"))
            self._say(text)
        else:
            text = Text("✔ ", style="bold green")
            text.append_text(literal(f"{self.result.name} is enrolled, installed and online", style="bold green"))
            if self.result.reused_identity:
                text.append(" (its existing identity was kept)", style="dim")
            self._say(text)
        finally:
            self.running = False
            self.query_one("#install", Button).disabled = False

    def action_back(self) -> None:
        if self.running:
            self.notify("An install is running: wait for it to finish or fail.", severity="warning")
            return
        self.dismiss()
