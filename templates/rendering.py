"""Sandboxed rendering of customer-authored templates (pure: no database, no I/O).

Customers are untrusted authors, so templates run in Jinja2's SandboxedEnvironment, which
refuses attribute escapes such as `''.__class__.__mro__`. Undefined variables raise instead of
rendering as empty strings: a password-reset mail without its link is worse than no mail.
HTML is autoescaped; the text part and the subject are not (they are not HTML).

Rendering runs in shared processes (the web process renders once at accept time to catch
missing variables), so a template may not allocate without bound: sequence repetition and
powers are capped, and output stops at MAX_RENDERED_CHARS. A loop that burns CPU without
output (nested `range(100000)`) is not bounded here; rate limits are the guard for that.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_RENDERED_CHARS = 1_000_000
MAX_EXPONENT = 100


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox, with `*` and `**` unable to build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent over {MAX_EXPONENT}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_RENDERED_CHARS
                ):
                    raise SecurityError(f"a repeated sequence over {MAX_RENDERED_CHARS} items")
        return super().call_binop(context, operator, left, right)


_html_env = _BoundedSandbox(autoescape=True, undefined=StrictUndefined)
_text_env = _BoundedSandbox(autoescape=False, undefined=StrictUndefined)


class RenderError(Exception):
    """The template cannot be rendered with this data. Permanent: retrying will not help."""

    def __init__(self, message: str, part: str) -> None:
        super().__init__(message)
        self.message = message
        self.part = part


class TemplateSource(Protocol):
    subject: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class RenderedContent:
    subject: str
    html: str
    text: str


def check_syntax(source: str, part: str, html: bool = False) -> None:
    """Raise RenderError if `source` is not a valid template."""
    try:
        (_html_env if html else _text_env).parse(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise RenderError(f"Template syntax error in {part}{where}: {exc.message}", part) from exc


@lru_cache(maxsize=2048)
def _compile(source: str, html: bool):
    return (_html_env if html else _text_env).from_string(source)


def _render_part(source: str, data: dict[str, Any], part: str, html: bool = False) -> str:
    if not source:
        return ""
    try:
        return _bounded_join(_compile(source, html).generate(data), part)
    except UndefinedError as exc:
        raise RenderError(f"Undefined variable in {part}: {exc.message}", part) from exc
    except SecurityError as exc:
        raise RenderError(f"Refused by the template sandbox in {part}: {exc}", part) from exc
    except TemplateError as exc:
        raise RenderError(f"Cannot render {part}: {exc}", part) from exc
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        # Data-dependent errors inside expressions, e.g. {{ a + b }} with a str and an int.
        raise RenderError(f"Cannot render {part}: {exc}", part) from exc


def _bounded_join(chunks, part: str) -> str:
    out, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDERED_CHARS:
            raise RenderError(f"{part} renders to more than {MAX_RENDERED_CHARS} characters", part)
        out.append(chunk)
    return "".join(out)


def render(version: TemplateSource, data: dict[str, Any]) -> RenderedContent:
    """Render the three parts of a template version with `data`."""
    subject = _render_part(version.subject, data, "subject")
    # Header injection: a subject is one line.
    subject = " ".join(subject.splitlines()).strip()
    return RenderedContent(
        subject=subject,
        html=_render_part(version.html, data, "html", html=True),
        text=_render_part(version.text, data, "text"),
    )
