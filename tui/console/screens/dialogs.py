"""Small modal dialogs: confirm a destructive action, pick one option, type one line, fill a short form
that the server checks, show a secret once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.textsafe import literal

Result = TypeVar("Result")


class Dialog(ModalScreen[Result]):
    """A small modal dialog: a box with its title (`title_text`) over the widgets of its `body`."""

    BOX_CLASSES = "dialog-box"
    TITLE_ONE_LINE = True  # False: the title keeps its line breaks (a question, a long form's title)

    def __init__(self, title: str) -> None:
        super().__init__(classes="dialog")
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(classes=self.BOX_CLASSES):
            yield Label(literal(self.title_text, single_line=self.TITLE_ONE_LINE), classes="dialog-title")
            yield from self.body()

    def body(self) -> ComposeResult:
        raise NotImplementedError


class ConfirmDialog(Dialog[bool]):
    """Yes/No; `y` confirms, `n`/escape cancels. The default button is No: safe on a stray Enter."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]
    TITLE_ONE_LINE = False

    def __init__(self, question: str, confirm: str = "Yes") -> None:
        super().__init__(question)
        self.confirm = confirm

    def body(self) -> ComposeResult:
        with Horizontal(classes="dialog-buttons"):
            yield Button("No", id="no", variant="primary")
            yield Button(self.confirm, id="yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class ChoiceDialog(Dialog[str | None]):
    """Pick one of a few options (e.g. a role); escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, options: list[str], current: str | None = None) -> None:
        super().__init__(title)
        self.options = options
        self.current = current

    def body(self) -> ComposeResult:
        yield OptionList(*[Option(literal(o), id=o) for o in self.options], id="choices")

    def on_mount(self) -> None:
        choices = self.query_one(OptionList)
        if self.current in self.options:
            choices.highlighted = self.options.index(self.current)
        choices.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class InputDialog(Dialog[str | None]):
    """One line of text (say, a registration code); Enter submits, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    TITLE_ONE_LINE = False

    def __init__(self, title: str, placeholder: str = "") -> None:
        super().__init__(title)
        self.placeholder = placeholder

    def body(self) -> ComposeResult:
        yield Input(placeholder=self.placeholder, id="answer")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SecretDialog(Dialog[None]):
    """Shows a token that the server returns once; it is not kept anywhere by the console."""

    BINDINGS = [Binding("escape,enter", "close", "Close")]

    def __init__(self, title: str, secret: str) -> None:
        super().__init__(title)
        self.secret = secret

    def body(self) -> ComposeResult:
        yield Label(literal(self.secret), id="secret")
        yield Label("Shown once: copy it now. Enter or Escape closes.", classes="dim")

    def action_close(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class Field:
    """One line of a FormDialog: `key` names the value, `label` is shown before the input."""

    key: str
    label: str
    placeholder: str = ""
    value: str = ""


# Sends a form's values; returns None when done, else why not (shown in the dialog, which stays open).
Submit = Callable[[dict[str, str]], Awaitable[str | None]]


class FormDialog(Dialog[dict[str, str] | None]):
    """A few one-line fields; Enter sends them with `submit`, escape cancels.

    A refusal (the server's 400 or 403) is shown in the dialog and what was typed stays, so it can
    be fixed and sent again; the dialog closes with the values once `submit` succeeds."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    BOX_CLASSES = "dialog-box form-box"
    TITLE_ONE_LINE = False

    def __init__(self, title: str, fields: list[Field], submit: Submit) -> None:
        super().__init__(title)
        self.fields = fields
        self.submit = submit
        self.sending = False

    def body(self) -> ComposeResult:
        for f in self.fields:
            with Horizontal(classes="form-row"):
                yield Label(f.label, classes="form-label")
                yield Input(value=f.value, placeholder=f.placeholder, id=f"field-{f.key}", compact=True)
        yield Static(id="form-error")
        yield Label("Enter sends, Escape cancels", classes="dim")

    def on_mount(self) -> None:
        empty = [i for i in self.query(Input) if not i.value]
        (empty[0] if empty else self.query_one(Input)).focus()

    def values(self) -> dict[str, str]:
        return {f.key: self.query_one(f"#field-{f.key}", Input).value.strip() for f in self.fields}

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.sending:
            return
        self.sending = True
        error_box = self.query_one("#form-error", Static)
        error_box.update(Text("sending…", style="dim"))
        try:
            values = self.values()
            problem = await self.submit(values)
        finally:
            self.sending = False
        if problem is None:
            self.dismiss(values)
        else:
            error_box.update(literal(problem, style="bold red", single_line=False))

    def action_cancel(self) -> None:
        self.dismiss(None)
